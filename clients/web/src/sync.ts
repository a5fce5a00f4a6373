// The page's connection to the server and its replica's storage.
//
// Owns: the IndexedDB database (the replica's records, and who is logged in on
// this browser), loading the WebAssembly engine, logging in over WebTransport,
// the session's connection loop (connect, read, persist-then-send, reconnect
// with capped backoff), and telling the screens what changed. The engine
// decides everything; this file only moves bytes and records.
import { openDB, type IDBPDatabase } from 'idb';
import init, { WebReplica, loginFrame, loginReply } from './pkg/callsync_web.js';

/** What GET /api/transport answers. */
interface TransportInfo {
  port: number;
  path: string;
  certificateHashes: string[];
  startLimitMs: number;
}

/** The logged-in user, as saved on this browser. */
export interface SavedLogin {
  token: string;
  expiresAt: number;
  tenant: string;
  user: string;
  role: string;
  device: string;
  actor: string;
}

/** A refusal from the engine or the server: a stable code, in two languages. */
export interface Refusal {
  code: string;
  message: string;
  messageJa: string;
}

/** One event from the engine (the session's events, replies, disconnects). */
export type EngineEvent = { event: string } & Record<string, unknown>;

const DB_NAME = 'callsync';
const RECORDS = 'records';
const META = 'meta';

type Db = IDBPDatabase<unknown>;

async function openDatabase(): Promise<Db> {
  return openDB(DB_NAME, 1, {
    upgrade(db) {
      db.createObjectStore(RECORDS);
      db.createObjectStore(META);
    },
  });
}

function hexToBytes(hex: string): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(new ArrayBuffer(hex.length / 2));
  for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return bytes;
}

function randomHex(bytes: number): string {
  const buf = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(buf, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** A fresh id for a call or an event. */
export function newId(prefix: string): string {
  return `${prefix}-${randomHex(12)}`;
}

/** Parses an engine error (thrown as JSON text) into a refusal. */
export function asRefusal(error: unknown): Refusal {
  const text = error instanceof Error ? error.message : String(error);
  try {
    const parsed = JSON.parse(text) as Partial<Refusal>;
    if (typeof parsed.code === 'string') {
      return {
        code: parsed.code,
        message: parsed.message ?? text,
        messageJa: parsed.messageJa ?? parsed.message ?? text,
      };
    }
  } catch {
    // Not JSON: a transport error.
  }
  return {
    code: 'connection',
    message: `Could not reach the server (${text})`,
    messageJa: `サーバーに接続できませんでした（${text}）`,
  };
}

async function transportInfo(): Promise<TransportInfo> {
  const response = await fetch('/api/transport', { cache: 'no-store' });
  if (!response.ok) throw new Error(`transport info: HTTP ${response.status}`);
  return (await response.json()) as TransportInfo;
}

function openTransport(info: TransportInfo): WebTransport {
  const url = `https://${location.hostname}:${info.port}${info.path}`;
  const options: WebTransportOptions = {};
  if (info.certificateHashes.length > 0) {
    options.serverCertificateHashes = info.certificateHashes.map((h) => ({
      algorithm: 'sha-256',
      value: hexToBytes(h),
    }));
  }
  return new WebTransport(url, options);
}

let engineReady: Promise<unknown> | undefined;
function loadEngine(): Promise<unknown> {
  engineReady ??= init();
  return engineReady;
}

/** Logs in over its own WebTransport session; saves the login on success. */
export async function logIn(email: string, password: string): Promise<SavedLogin> {
  await loadEngine();
  const db = await openDatabase();
  const device = ((await db.get(META, 'device')) as string | undefined) ?? `desk-web-${randomHex(6)}`;
  const actor = ((await db.get(META, 'actor')) as string | undefined) ?? randomHex(16);
  await db.put(META, device, 'device');
  await db.put(META, actor, 'actor');
  const info = await transportInfo();
  const transport = openTransport(info);
  try {
    await transport.ready;
    const stream = await transport.createBidirectionalStream();
    const writer = stream.writable.getWriter();
    await writer.write(loginFrame(email, password, device, actor));
    const reader = stream.readable.getReader();
    let received = new Uint8Array(0);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new Error('the server closed without answering');
      const joined = new Uint8Array(received.length + value.length);
      joined.set(received);
      joined.set(value, received.length);
      received = joined;
      const reply = loginReply(received);
      if (reply === undefined) continue;
      const parsed = JSON.parse(reply) as {
        loggedIn?: Omit<SavedLogin, 'device' | 'actor'>;
        error?: Refusal & { message: string };
      };
      if (parsed.error) {
        throw new LoginRefused(parsed.error);
      }
      if (!parsed.loggedIn) throw new Error('unexpected answer');
      const login: SavedLogin = { ...parsed.loggedIn, device, actor };
      const previous = (await db.get(META, 'login')) as SavedLogin | undefined;
      if (previous && (previous.user !== login.user || previous.tenant !== login.tenant)) {
        // Another user's replica must not show through.
        await db.clear(RECORDS);
      }
      await db.put(META, login, 'login');
      return login;
    }
  } finally {
    transport.close();
    db.close();
  }
}

/** A refused login, with the server's message. */
export class LoginRefused extends Error {
  constructor(readonly refusal: Refusal) {
    super(refusal.message);
  }
}

/** The login saved on this browser, if any. */
export async function savedLogin(): Promise<SavedLogin | undefined> {
  const db = await openDatabase();
  try {
    return (await db.get(META, 'login')) as SavedLogin | undefined;
  } finally {
    db.close();
  }
}

/** Forgets the login and the replica. */
export async function logOut(): Promise<void> {
  const db = await openDatabase();
  await db.delete(META, 'login');
  await db.clear(RECORDS);
  db.close();
}

type Listener = (events: EngineEvent[]) => void;

/** The replica and its connection, for one logged-in page. */
export class PageSync {
  private writer: WritableStreamDefaultWriter<Uint8Array> | undefined;
  private transport: WebTransport | undefined;
  private listeners = new Set<Listener>();
  private chain: Promise<void> = Promise.resolve();
  private attempt = 0;
  private stopped = false;
  online = false;
  startLimitMs = 60_000;
  /** When the connection was last made ready (ms, for the benchmarks). */
  connectedIn = 0;
  /**
   * Counts the batches emitted so far: a screen that subscribes after a batch
   * went out (effects run after paint) sees the count moved and redraws, so
   * an `online` emitted before it subscribed is not missed.
   */
  version = 0;

  private constructor(
    readonly replica: WebReplica,
    private readonly db: Db,
    readonly login: SavedLogin,
  ) {}

  /** Opens the replica from IndexedDB (works offline), then starts connecting. */
  static async open(login: SavedLogin): Promise<PageSync> {
    await loadEngine();
    const db = await openDatabase();
    const replica = new WebReplica(login.tenant, login.user, login.role, login.device, login.actor, 60_000);
    let cursor = await db.transaction(RECORDS).store.openCursor();
    while (cursor) {
      replica.restore(String(cursor.key), new Uint8Array(cursor.value as ArrayBuffer));
      cursor = await cursor.continue();
    }
    const sync = new PageSync(replica, db, login);
    void sync.run();
    return sync;
  }

  /** Calls `listener` with every batch of engine events. */
  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(events: EngineEvent[]): void {
    this.version += 1;
    for (const listener of this.listeners) listener(events);
  }

  /**
   * Persists what the engine committed, then sends what it produced, then tells
   * the screens: in that order, one call at a time. Nothing reaches the server
   * or the screen as saved before IndexedDB holds it.
   */
  release(extra: EngineEvent[] = []): Promise<void> {
    const step = this.chain.then(async () => {
      const flush = this.replica.takeFlush();
      if (flush.length > 0) {
        const tx = this.db.transaction(RECORDS, 'readwrite');
        for (const record of flush) {
          if (record.value === undefined) void tx.store.delete(record.key);
          else void tx.store.put(record.value.slice().buffer, record.key);
          record.free();
        }
        await tx.done;
        performance.mark('callsync:persisted');
      }
      const outgoing = this.replica.takeOutgoing();
      if (outgoing.length > 0 && this.writer) {
        // Queued in order on the stream; the screens need not wait for the
        // transport to take it (a failed write ends the session, and the outbox
        // sends the change again on the next one).
        void this.writer.write(outgoing).catch(() => undefined);
        performance.mark('callsync:sent');
      }
      const events = JSON.parse(this.replica.takeEvents()) as EngineEvent[];
      events.push(...extra);
      if (events.length > 0) this.emit(events);
    });
    this.chain = step.catch(() => undefined);
    return step;
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      const started = performance.now();
      try {
        const info = await transportInfo();
        this.startLimitMs = info.startLimitMs;
        const transport = openTransport(info);
        this.transport = transport;
        await transport.ready;
        const stream = await transport.createBidirectionalStream();
        this.writer = stream.writable.getWriter();
        this.connectedIn = performance.now() - started;
        this.replica.connect(this.login.token);
        await this.release();
        const reader = stream.readable.getReader();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          this.replica.receive(value);
          if (this.replica.joined && !this.online) {
            this.online = true;
            this.attempt = 0;
            await this.release([{ event: 'online' }]);
          } else {
            await this.release();
          }
        }
        this.drop('the server ended the session');
      } catch (error) {
        this.drop(asRefusal(error).message);
      }
      if (this.stopped) break;
      // Capped exponential backoff with jitter: 0.5 s doubling to 15 s.
      const wait = Math.min(15_000, 500 * 2 ** this.attempt) * (0.5 + Math.random() / 2);
      this.attempt = Math.min(this.attempt + 1, 10);
      await new Promise((resolve) => setTimeout(resolve, wait));
    }
  }

  private drop(reason: string): void {
    this.writer = undefined;
    try {
      this.transport?.close();
    } catch {
      // Already closed.
    }
    this.transport = undefined;
    this.replica.disconnected(reason);
    const wasOnline = this.online;
    this.online = false;
    void this.release(wasOnline ? [{ event: 'offline' }] : []);
  }

  /** Asks the server something; resolves with the reply's result. */
  async ask(call: Record<string, unknown>, timeoutMs = 10_000): Promise<Record<string, unknown>> {
    const id = this.replica.ask(JSON.stringify(call));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        unsubscribe();
        reject(new Error('no answer'));
      }, timeoutMs);
      const unsubscribe = this.subscribe((events) => {
        for (const e of events) {
          if (e.event === 'reply' && e.id === id) {
            clearTimeout(timer);
            unsubscribe();
            resolve(e.result as Record<string, unknown>);
          }
        }
      });
      void this.release();
    });
  }

  /** Runs an action on the replica, then persists and sends it. */
  async act<T>(action: (replica: WebReplica) => string): Promise<T> {
    const result = JSON.parse(action(this.replica)) as T;
    await this.release([{ event: 'changed' }]);
    return result;
  }

  /** Stops connecting (logging out). */
  stop(): void {
    this.stopped = true;
    this.drop('logged out');
    this.db.close();
  }
}

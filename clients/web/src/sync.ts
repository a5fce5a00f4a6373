// The page's pump for its device engine: storage, transport, timers.
//
// Owns: IndexedDB (one database per user who logged in on this browser, so a
// second user never sees the first one's data and the first one's unsent work
// waits for their next login; and a small one naming the current user),
// loading the WebAssembly engine, opening and closing WebTransport connections
// when the engine says so, writing the bytes it releases, the one timer it asks
// for, and telling the screens what happened. Every decision (when to connect
// and retry, the login, the server's clock, request deadlines, what a refusal
// means, the rep's actions and the result flow, logout) is the engine's:
// `callsync-session`'s device session, the one the phone runs.
import { openDB, type IDBPDatabase } from 'idb';
import type { EngineEvent, ErrorView, LoginAnswer, PageState, RpcCall, RpcResult, SaveOutcomeView, Unsent, UploadState } from './types';

export type { EngineEvent } from './types';
import init, { WebDevice } from './pkg/callsync_web.js';

/** What GET /api/transport answers. */
interface TransportInfo {
  port: number;
  path: string;
  certificateHashes: string[];
  startLimitMs: number;
}

/** A refusal from the engine or the server: a stable code, in two languages. */
export type Refusal = ErrorView;

/** Where the device's link stands, as the engine says (`state()`). */
export type DeviceState = PageState;

const META_DB = 'callsync';
const META = 'meta';
const RECORDS = 'records';

type Db = IDBPDatabase<unknown>;

async function openMeta(): Promise<Db> {
  return openDB(META_DB, 2, {
    upgrade(db, oldVersion) {
      if (oldVersion < 1) {
        db.createObjectStore(RECORDS);
        db.createObjectStore(META);
      }
    },
  });
}

function userDbName(email: string): string {
  return `callsync-user:${email.trim().toLowerCase()}`;
}

async function openUserDb(email: string): Promise<Db> {
  return openDB(userDbName(email), 1, {
    upgrade(db) {
      db.createObjectStore(RECORDS);
    },
  });
}

function hexToBytes(hex: string): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(new ArrayBuffer(hex.length / 2));
  for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return bytes;
}

/** 53 random bits, to seed the engine's randomness. */
function seed(): number {
  const [a = 0, b = 0] = crypto.getRandomValues(new Uint32Array(2));
  return (a & 0x1f_ffff) * 2 ** 32 + b;
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
  const info = (await response.json()) as TransportInfo;
  localStorage.setItem('transport', JSON.stringify(info));
  return info;
}

function cachedTransport(): TransportInfo | undefined {
  try {
    return JSON.parse(localStorage.getItem('transport') ?? 'null') as TransportInfo | undefined;
  } catch {
    return undefined;
  }
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

/** A refused login, with the server's message. */
export class LoginRefused extends Error {
  constructor(readonly refusal: Refusal) {
    super(refusal.message);
  }
}

/** Reads every record of a user's database into a new engine. */
async function deviceFrom(db: Db): Promise<WebDevice> {
  await loadEngine();
  const device = new WebDevice(seed(), cachedTransport()?.startLimitMs ?? 60_000);
  let cursor = await db.transaction(RECORDS).store.openCursor();
  while (cursor) {
    device.restore(String(cursor.key), new Uint8Array(cursor.value as ArrayBuffer));
    cursor = await cursor.continue();
  }
  return device;
}

type Listener = (events: EngineEvent[]) => void;

/** One logged-in user's device engine and the page's pump around it. */
export class PageSync {
  private listeners = new Set<Listener>();
  private chain: Promise<void> = Promise.resolve();
  private transport: WebTransport | undefined;
  private writer: WritableStreamDefaultWriter<Uint8Array> | undefined;
  /** Counts connections, so a late answer of an old one is ignored. */
  private generation = 0;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private closed = false;
  private readonly onOnline = () => this.call((d) => d.networkUp(Date.now()));
  /** The engine's view of the link (refreshed after every call). */
  state: DeviceState = { phase: 'idle', stopped: null, retryAt: null, serverNow: null, clock: null, identity: null, revoking: false };
  /** When the connection was last made ready (ms, for the benchmarks). */
  connectedIn = 0;
  /**
   * Counts the batches emitted so far: a screen that subscribes after a batch
   * went out (effects run after paint) sees the count moved and redraws.
   */
  version = 0;

  private constructor(
    readonly device: WebDevice,
    private readonly db: Db,
    readonly email: string,
  ) {
    this.refreshState();
    addEventListener('online', this.onOnline);
  }

  /** Whether the engine says the device is joined. */
  get online(): boolean {
    return this.state.phase === 'online';
  }

  /** Who is logged in. */
  get login(): { user: string; role: string; tenant: string } {
    const id = this.state.identity;
    return { user: id?.user ?? this.email, role: id?.role ?? 'user', tenant: id?.tenant ?? '' };
  }

  /** The user who last used this browser, their device opened from IndexedDB (works offline). */
  static async openCurrent(): Promise<PageSync | undefined> {
    const meta = await openMeta();
    const email = (await meta.get(META, 'current')) as string | undefined;
    meta.close();
    if (!email) return undefined;
    const db = await openUserDb(email);
    const device = await deviceFrom(db);
    if (!device.open()) {
      db.close();
      return undefined;
    }
    const sync = new PageSync(device, db, email);
    sync.call((d) => d.start(Date.now()));
    return sync;
  }

  /** Logs in over a WebTransport connection of its own, then goes online. */
  static async logIn(email: string, password: string): Promise<PageSync> {
    const db = await openUserDb(email);
    const device = await deviceFrom(db);
    const info = await transportInfo();
    const transport = openTransport(info);
    let answer: LoginAnswer | undefined;
    try {
      await transport.ready;
      const stream = await transport.createBidirectionalStream();
      const writer = stream.writable.getWriter();
      await writer.write(device.loginStart(Date.now(), email, password));
      const reader = stream.readable.getReader();
      while (!answer) {
        const { value, done } = await reader.read();
        if (done) throw new Error('the server closed without answering');
        const reply = device.loginReceive(Date.now(), value);
        if (reply !== undefined) answer = JSON.parse(reply) as typeof answer;
      }
    } catch (error) {
      db.close();
      throw error;
    } finally {
      transport.close();
    }
    if (answer && 'refused' in answer) {
      db.close();
      throw new LoginRefused(answer.refused);
    }
    const sync = new PageSync(device, db, email);
    // The identity is written before the session starts.
    await sync.call(() => undefined);
    const meta = await openMeta();
    await meta.put(META, email.trim().toLowerCase(), 'current');
    meta.close();
    await sync.call((d) => d.start(Date.now()));
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

  private refreshState(): void {
    this.state = JSON.parse(this.device.state(Date.now())) as DeviceState;
  }

  /**
   * Runs one engine call, then, in this order: writes its batches to IndexedDB
   * (and tells the engine each one is written, or failed), carries out the
   * transport steps the engine releases (only those whose writes IndexedDB
   * holds), shows its events, and sets the engine's timer. One call at a time.
   */
  call<T>(action: (device: WebDevice) => T): Promise<T> {
    const step = this.chain.then(async () => {
      if (this.closed) throw new Error('closed');
      const result = action(this.device);
      await this.release();
      return result;
    });
    this.chain = step.then(
      () => undefined,
      () => undefined,
    );
    return step;
  }

  private async release(): Promise<void> {
    for (let batch = this.device.takeFlush(); batch; batch = this.device.takeFlush()) {
      const ticket = batch.ticket;
      let ok = true;
      try {
        const tx = this.db.transaction(RECORDS, 'readwrite');
        for (const record of batch.records) {
          if (record.value === undefined) void tx.store.delete(record.key);
          else void tx.store.put(record.value.slice().buffer, record.key);
        }
        await tx.done;
        performance.mark('callsync:persisted');
      } catch {
        ok = false;
      }
      this.device.flushed(Date.now(), ticket, ok);
    }
    for (const step of this.device.takeOutgoing()) {
      if (step.op === 'send' && step.bytes && this.writer) {
        // Queued in order on the stream; a failed write ends the connection
        // (the reader sees it) and the outbox sends again on the next one.
        void this.writer.write(step.bytes).catch(() => undefined);
        performance.mark('callsync:sent');
      } else if (step.op === 'close') {
        this.closeTransport();
      } else if (step.op === 'connect') {
        this.closeTransport();
        void this.connect(++this.generation);
      }
    }
    const events = JSON.parse(this.device.takeEvents()) as EngineEvent[];
    this.refreshState();
    clearTimeout(this.timer);
    const at = this.device.pollTimeout();
    if (at !== undefined) {
      this.timer = setTimeout(() => void this.call((d) => d.handleTimeout(Date.now())), Math.max(0, at - Date.now()));
    }
    this.emit(events);
  }

  private closeTransport(): void {
    this.generation += 1;
    this.writer = undefined;
    try {
      this.transport?.close();
    } catch {
      // Already closed.
    }
    this.transport = undefined;
  }

  /** Opens the connection the engine asked for; reports how that went. */
  private async connect(generation: number): Promise<void> {
    const started = performance.now();
    try {
      const info = await transportInfo();
      if (generation !== this.generation) return;
      const transport = openTransport(info);
      this.transport = transport;
      await transport.ready;
      const stream = await transport.createBidirectionalStream();
      if (generation !== this.generation) {
        transport.close();
        return;
      }
      this.writer = stream.writable.getWriter();
      this.connectedIn = performance.now() - started;
      await this.call((d) => d.connected(Date.now()));
      const reader = stream.readable.getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done || generation !== this.generation) break;
        await this.call((d) => d.receive(Date.now(), value)).catch(() => undefined);
      }
      if (generation === this.generation) {
        await this.call((d) => d.disconnected(Date.now(), 'the server ended the connection'));
      }
    } catch (error) {
      if (generation === this.generation) {
        await this.call((d) => d.disconnected(Date.now(), asRefusal(error).message)).catch(() => undefined);
      }
    }
  }

  /** Where the upload of `call`'s recording stands, as the user's phone said last (null: no connected phone holds it). */
  uploadOf(call: string): UploadState | null {
    return JSON.parse(this.device.uploadOf(call)) as UploadState | null;
  }

  /** Asks the server something; resolves with the answer (a refusal is one), rejects if none came. */
  ask(request: RpcCall): Promise<RpcResult> {
    return this.askWith((d) => d.ask(Date.now(), JSON.stringify(request)));
  }

  /** Installs a plugin file (the engine builds the request, as the CLI's); resolves with the server's verdict. */
  installPlugin(file: Uint8Array, settings: string, holidays: string | undefined, timeZone: string): Promise<RpcResult> {
    return this.askWith((d) => d.installPlugin(Date.now(), file, settings, holidays, timeZone));
  }

  /** Makes an installed rule set active again; resolves with the server's verdict. */
  rollBackPlugin(ruleset: string): Promise<RpcResult> {
    return this.askWith((d) => d.rollBackPlugin(Date.now(), ruleset));
  }

  /** Runs `issue` (which asks the engine something and returns its ticket) and waits for its answer. */
  private askWith(issue: (device: WebDevice) => number): Promise<RpcResult> {
    return new Promise((resolve, reject) => {
      let ticket: number | undefined;
      const early: EngineEvent[] = [];
      const settle = (events: EngineEvent[]) => {
        for (const e of events) {
          if (!('ticket' in e) || e.ticket !== ticket) continue;
          if (e.event === 'reply') {
            unsubscribe();
            resolve(e.result);
          } else if (e.event === 'ask-failed') {
            unsubscribe();
            reject(new Error(JSON.stringify({ code: e.code, message: e.message, messageJa: e.messageJa })));
          }
        }
      };
      const unsubscribe = this.subscribe((events) => {
        if (ticket === undefined) early.push(...events);
        else settle(events);
      });
      this.call(issue).then(
        (t) => {
          ticket = t;
          settle(early);
        },
        (error: unknown) => {
          unsubscribe();
          reject(error instanceof Error ? error : new Error(String(error)));
        },
      );
    });
  }

  /** Runs one of the rep's actions; resolves with its JSON answer. */
  async act<T>(action: (device: WebDevice) => string): Promise<T> {
    return JSON.parse(await this.call(action)) as T;
  }

  /**
   * Saves a result form (`form`: its JSON) through the engine's result flow:
   * resolves when it is saved on this device (`kept`: why the pick was kept as
   * made, e.g. offline), rejects with the rules' words if refused.
   */
  saveResult(save: (device: WebDevice) => string): Promise<{ kept: string | null }> {
    return new Promise((resolve, reject) => {
      let ticket: number | undefined;
      const early: EngineEvent[] = [];
      const settle = (events: EngineEvent[]) => {
        for (const e of events) {
          if (ticket === undefined || !('ticket' in e) || e.ticket !== ticket) continue;
          if (e.event === 'result-saved') {
            unsubscribe();
            resolve({ kept: e.keptAsPicked ?? null });
          } else if (e.event === 'result-refused') {
            unsubscribe();
            reject(new Error(JSON.stringify({ code: e.code, message: e.message, messageJa: e.messageJa })));
          }
        }
      };
      const unsubscribe = this.subscribe((events) => {
        if (ticket === undefined) early.push(...events);
        else settle(events);
      });
      this.call(save).then(
        (answer) => {
          const outcome = JSON.parse(answer) as SaveOutcomeView;
          if (outcome.deciding === undefined || outcome.deciding === null) {
            unsubscribe();
            resolve({ kept: outcome.kept ?? null });
          } else {
            ticket = outcome.deciding;
            settle(early);
          }
        },
        (error: unknown) => {
          unsubscribe();
          reject(error instanceof Error ? error : new Error(String(error)));
        },
      );
    });
  }

  /** What a logout now would leave unsent. */
  async unsent(): Promise<Unsent> {
    return JSON.parse(await this.call((d) => d.unsent())) as Unsent;
  }

  /**
   * Logs out: the engine sends unsent work first when online (else keeps it for
   * this user's next login here) and ends the session on the server. Resolves
   * once the engine has stopped.
   */
  async logOut(): Promise<void> {
    await this.call((d) => d.logout(Date.now()));
    const meta = await openMeta();
    await meta.delete(META, 'current');
    meta.close();
    // Online, unsent work goes first, then the session is ended on the server
    // over a connection of its own; offline, both wait for this user's next
    // login here. The page waits a little for the end, not for ever.
    const done = () => this.state.phase === 'stopped' && !this.state.revoking;
    if (!done()) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(finish, 5_000);
        const unsubscribe = this.subscribe(() => {
          if (done()) finish();
        });
        function finish() {
          clearTimeout(timer);
          unsubscribe();
          resolve();
        }
      });
    }
  }

  /** Stops pumping (the page leaves this user). */
  close(): void {
    removeEventListener('online', this.onOnline);
    clearTimeout(this.timer);
    this.closeTransport();
    this.closed = true;
    this.db.close();
  }
}

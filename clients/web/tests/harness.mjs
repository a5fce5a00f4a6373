// The browser tests' world: a real `callsync serve` serving the built page, real
// `callsync` desk/phone processes on their own data directories, and Debian's
// Chromium driven by playwright-core (QUIC on: WebTransport needs it).
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const WEB = path.resolve(here, '..');
const ROOT = path.resolve(WEB, '../..');
const TARGET = process.env.CARGO_TARGET_DIR ?? path.join(ROOT, 'target');
export const BIN = process.env.CALLSYNC_BIN ?? path.join(TARGET, 'debug', 'callsync');
export const DIST = path.join(WEB, 'dist');
export const SCREENS = process.env.CALLSYNC_SCREENS ?? path.join(WEB, 'test-results', 'screens');
export const OWNER = 'owner@acme.example';
export const REP = 'rep@acme.example';
export const PASSWORD = 'correct horse battery';
export const NUMBER = '03-1234-5678';
export const CONTRACT_REQUIRED_JA = 'このデータへのアクセスには認証が必要です';

/**
 * The path of a plugin module callsync ships (`standard`, `business_hours`,
 * `hostile_wasi`, …) as the build of `BIN` made it: the newest of the
 * `callsync-shipped-plugins` build script's outputs.
 */
export function shippedPlugin(name) {
  const build = path.join(path.dirname(BIN), 'build');
  const found = readdirSync(build)
    .filter((dir) => dir.startsWith('callsync-shipped-plugins-'))
    .map((dir) => path.join(build, dir, 'out', 'plugins-target', 'wasm32-unknown-unknown', 'release', `callsync_plugin_${name}.wasm`))
    .filter((file) => existsSync(file))
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
  if (found.length === 0) throw new Error(`no built callsync_plugin_${name}.wasm under ${build}`);
  return found[0];
}

/** Runs `callsync --json --data DIR ARGS…`; returns the parsed JSON (or throws with stderr). */
export function cli(dir, args, env = {}) {
  const out = execFileSync(BIN, ['--json', '--data', dir, ...args], {
    env: { ...process.env, CALLSYNC_PASSWORD: PASSWORD, CALLSYNC_NEW_PASSWORD: PASSWORD, ...env },
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return out.trim() ? JSON.parse(out) : null;
}

/** A process printing one JSON object per line, with a wait on its lines. */
class JsonLines {
  constructor(child) {
    this.child = child;
    this.seen = [];
    /** When each line of `seen` arrived (ms since the epoch, sub-ms precision). */
    this.arrivals = [];
    this.waiters = [];
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      let value;
      try {
        value = JSON.parse(line);
      } catch {
        return;
      }
      this.seen.push(value);
      this.arrivals.push(performance.timeOrigin + performance.now());
      for (const w of [...this.waiters]) {
        if (w.match(value)) {
          this.waiters.splice(this.waiters.indexOf(w), 1);
          w.resolve(value);
        }
      }
    });
  }

  /** The first line (seen or coming) that `match` accepts, within `ms`. */
  waitFor(match, ms = 20_000) {
    const found = this.seen.find(match);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const waiter = { match, resolve };
      this.waiters.push(waiter);
      setTimeout(() => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) {
          this.waiters.splice(i, 1);
          reject(new Error(`timed out waiting; lines so far: ${JSON.stringify(this.seen)}`));
        }
      }, ms);
    });
  }

  stop() {
    this.child.kill('SIGTERM');
    return new Promise((resolve) => {
      if (this.child.exitCode !== null) resolve();
      else this.child.once('exit', () => resolve());
    });
  }
}

/** A server with tenant acme (owner + a rep with the contract), a customer, and the rep's phone. */
export class World {
  static async start({ global = [], customers = 0 } = {}) {
    const world = new World();
    world.root = mkdtempSync(path.join(tmpdir(), 'callsync-web-'));
    await world.startServer(global);
    if (customers > 0) await world.importCustomers(customers);
    world.admin = world.dir('admin-desk');
    world.login(world.admin, 'desk', OWNER);
    cli(world.admin, ['admin', 'add-user', REP, '--role', 'user', '--contract']);
    world.repDesk = world.dir('rep-desk');
    world.login(world.repDesk, 'desk', REP);
    cli(world.repDesk, ['desk', 'create', '--id', 'cus-1', '--company', '株式会社さくら物産', '--contact', '佐藤 健一', '--number', `代表:${NUMBER}`]);
    world.phone = world.dir('rep-phone');
    world.login(world.phone, 'phone', REP, 'phone-rep');
    return world;
  }

  async startServer(global = this.global ?? []) {
    this.global = global;
    const child = spawn(
      BIN,
      ['--json', '--data', this.dir('server'), '--tenant', 'acme', ...global, 'serve', '--listen', this.addr ?? '127.0.0.1:0', '--init-owner', OWNER, '--page', DIST],
      { env: { ...process.env, CALLSYNC_PASSWORD: PASSWORD }, stdio: ['ignore', 'pipe', process.env.CALLSYNC_TEST_SERVER_LOG ? 'inherit' : 'ignore'] },
    );
    this.server = new JsonLines(child);
    const first = await this.server.waitFor((v) => 'listening' in v, 30_000);
    this.addr = first.listening;
    this.fingerprint = first.fingerprint;
    this.page = first.page;
  }

  /**
   * Adds `n` customers (`cus-00000`…, 株式会社テスト00000…) to the tenant: the
   * server stops, its data directory takes them in one import, and it starts again.
   */
  async importCustomers(n) {
    const rows = ['id,company,contact,owner,phones'];
    for (let i = 0; i < n; i++) {
      const id = String(i).padStart(5, '0');
      rows.push(`cus-${id},株式会社テスト${id},担当${i},${REP},代表:03-${1000 + (i % 9000)}-${String(i % 10000).padStart(4, '0')}`);
    }
    const file = path.join(this.root, 'customers.csv');
    writeFileSync(file, `${rows.join('\n')}\n`);
    await this.stopServer();
    execFileSync(BIN, ['--json', '--data', this.dir('server'), '--tenant', 'acme', 'customer', 'import', file], { stdio: 'ignore' });
    await this.startServer();
  }

  async stopServer() {
    await this.server.stop();
  }

  dir(name) {
    return path.join(this.root, name);
  }

  login(dir, kind, email, device) {
    const args = [kind, 'login', '--server', this.addr, '--fingerprint', this.fingerprint, '--email', email];
    if (device) args.push('--device-id', device);
    return cli(dir, args);
  }

  /** `callsync phone run` on the rep's phone (`env`: extra environment, e.g. a clock skew; `args`: e.g. the network kind). */
  phoneRun(env = {}, args = []) {
    const child = spawn(BIN, ['--data', this.phone, 'phone', 'run', ...args], { stdio: ['ignore', 'pipe', 'ignore'], env: { ...process.env, ...env } });
    this.running = new JsonLines(child);
    return this.running;
  }

  async close() {
    await this.running?.stop();
    await this.server?.stop();
    rmSync(this.root, { recursive: true, force: true });
  }
}

/** Debian's Chromium, headless; QUIC stays on (WebTransport runs over it). */
export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/**
 * Runs `body(world, browser)` with a fresh world (`options` as World.start's)
 * and browser, closing both after; on failure every open page is photographed
 * as `failure-<name>`.
 */
export async function inWorld(name, options, body) {
  const world = await World.start(options);
  const browser = await launchBrowser();
  try {
    await body(world, browser);
  } catch (error) {
    for (const page of browser.contexts().flatMap((c) => c.pages())) {
      await screenshot(page, `failure-${name}`).catch(() => undefined);
    }
    throw error;
  } finally {
    await browser.close();
    await world.close();
  }
}

/** Saves a screenshot of the page as `name`.png under the screens folder. */
export async function screenshot(page, name) {
  mkdirSync(SCREENS, { recursive: true });
  await page.screenshot({ path: path.join(SCREENS, `${name}.png`), fullPage: true });
}

const AXE = readFileSync(path.join(WEB, 'node_modules', 'axe-core', 'axe.min.js'), 'utf8');

/** Runs axe-core on the page; returns the serious and critical violations. */
export async function seriousViolations(page) {
  // Evaluated through the debugging protocol, which the page's CSP (no inline
  // scripts) does not govern; the page itself stays under its CSP.
  await page.evaluate(AXE);
  const result = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(' ')) }));
  });
  return result.filter((v) => v.impact === 'serious' || v.impact === 'critical');
}

/** Logs the page in as `email`. */
export async function logInPage(page, world, email, password = PASSWORD) {
  await page.goto(world.page);
  await page.getByLabel('メールアドレス').fill(email);
  await page.getByLabel('パスワード').fill(password);
  await page.getByRole('button', { name: 'ログイン' }).click();
}

/**
 * Makes the page's clock run `ms` off (positive: fast), as a computer whose clock
 * is wrong: `Date` and `Date.now()` are shifted before any of the page's code runs.
 */
export async function skewPageClock(page, ms) {
  await page.addInitScript((skew) => {
    const RealDate = Date;
    class SkewedDate extends RealDate {
      constructor(...args) {
        if (args.length === 0) super(RealDate.now() + skew);
        else super(...args);
      }
      static now() {
        return RealDate.now() + skew;
      }
    }
    globalThis.Date = SkewedDate;
  }, ms);
}

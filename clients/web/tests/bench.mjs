// The page's latencies on loopback, as JSON: medians (and min/max) over RUNS
// runs of page load to interactive, WebTransport connect, click 顧客にコール →
// the phone shows the request (from the page's click event, and from the test
// driver's click() call, which spends tens of ms before the event; in the page,
// click → bytes handed to the stream), the phone starts → the call bar shows;
// and the same request through the native desk command, in the same run.
//
//   CALLSYNC_BIN=target/release/callsync node tests/bench.mjs   (after build.sh)
import { execFileSync } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { BIN, World, cli, launchBrowser, logInPage, NUMBER } from './harness.mjs';

const RUNS = Number(process.env.RUNS ?? 20);

function summary(samples) {
  const sorted = [...samples].sort((a, b) => a - b);
  const median = sorted.length % 2 ? sorted[(sorted.length - 1) / 2] : (sorted[sorted.length / 2 - 1] + sorted[sorted.length / 2]) / 2;
  const round = (v) => Math.round(v * 10) / 10;
  return { median_ms: round(median), min_ms: round(sorted[0]), max_ms: round(sorted.at(-1)), runs: sorted.length };
}

const world = await World.start();
const browser = await launchBrowser();
const results = {};
try {
  const phone = world.phoneRun();
  await phone.waitFor((e) => e.event === 'caught-up');
  const page = await browser.newPage();
  await logInPage(page, world, 'rep@acme.example');
  await page.getByRole('link', { name: '株式会社さくら物産' }).waitFor({ timeout: 15_000 });

  // Page load to interactive: a reload (logged in, the service worker and
  // IndexedDB warm) until the customer list can be clicked.
  const loads = [];
  for (let i = 0; i < RUNS; i++) {
    const start = performance.now();
    await page.reload();
    await page.getByRole('link', { name: '株式会社さくら物産' }).waitFor();
    loads.push(performance.now() - start);
  }
  results.page_load_to_interactive = summary(loads);

  // WebTransport connect: handshake (QUIC + HTTP/3 CONNECT) until `ready`.
  const connects = await page.evaluate(async (runs) => {
    const info = await (await fetch('/api/transport')).json();
    const hashes = info.certificateHashes.map((h) => ({
      algorithm: 'sha-256',
      value: new Uint8Array(h.match(/../g).map((b) => parseInt(b, 16))),
    }));
    const out = [];
    for (let i = 0; i < runs; i++) {
      const start = performance.now();
      const wt = new WebTransport(`https://${location.hostname}:${info.port}${info.path}`, { serverCertificateHashes: hashes });
      await wt.ready;
      out.push(performance.now() - start);
      wt.close();
      await wt.closed.catch(() => undefined);
    }
    return out;
  }, RUNS);
  results.webtransport_connect = summary(connects);

  // Click → phone, and phone start → call bar, on the same call each run.
  await page.getByRole('link', { name: '株式会社さくら物産' }).click();
  await page.getByTestId('presence').filter({ hasText: 'スマートフォン接続中' }).waitFor({ timeout: 15_000 });
  const clickToPhone = [];
  const clickToSent = [];
  // In the page: when the click lands, and when the engine's bytes are handed to
  // the stream (the `callsync:sent` mark).
  await page.evaluate(() => {
    // Stamped with the event's own time: when the input reached the page.
    document.addEventListener('click', (e) => performance.mark('bench:click', { startTime: e.timeStamp }), true);
  });
  // The page's clock against this process's (both count from the epoch): the
  // reading with the shortest round trip, its error at most half of that.
  let clock = { rtt: Infinity, offset: 0 };
  for (let i = 0; i < 20; i++) {
    const before = performance.timeOrigin + performance.now();
    const inPage = await page.evaluate(() => performance.timeOrigin + performance.now());
    const after = performance.timeOrigin + performance.now();
    if (after - before < clock.rtt) clock = { rtt: after - before, offset: inPage - (before + after) / 2 };
  }
  results.page_clock_error_ms = Math.round((clock.rtt / 2) * 100) / 100;
  const domClickToPhone = [];
  const driverToDomClick = [];
  const startToBar = [];
  for (let i = 0; i < RUNS; i++) {
    const seen = phone.seen.length;
    const start = performance.now();
    await page.getByRole('button', { name: '顧客にコール' }).click();
    const requested = await phone.waitFor((e) => e.event === 'call-requested' && phone.seen.indexOf(e) >= seen);
    clickToPhone.push(performance.now() - start);
    const startEpoch = performance.timeOrigin + start;
    const arrived = phone.arrivals[phone.seen.indexOf(requested)];
    await page.getByTestId('waiting').waitFor();
    // The click as the page saw it (the DOM event), on this process's clock.
    const domClick = (await page.evaluate(() => performance.timeOrigin + performance.getEntriesByName('bench:click').at(-1).startTime)) - clock.offset;
    domClickToPhone.push(arrived - domClick);
    driverToDomClick.push(domClick - startEpoch);
    clickToSent.push(
      await page.evaluate(() => {
        const click = performance.getEntriesByName('bench:click').at(-1);
        const sent = performance.getEntriesByName('callsync:sent').filter((m) => m.startTime >= click.startTime)[0];
        return sent.startTime - click.startTime;
      }),
    );
    // The tap on the phone: `phone start` returns once the start is recorded.
    cli(world.phone, ['phone', 'start', requested.call]);
    const started = performance.now();
    await page.getByTestId('call-bar').waitFor();
    startToBar.push(performance.now() - started);
    cli(world.phone, ['phone', 'end', requested.call, '--duration', '10']);
    await page.getByTestId('call-bar').filter({ hasText: 'スマートフォンで終話' }).waitFor();
    await page.getByRole('button', { name: '通話を終了' }).click();
    const dialog = page.getByRole('dialog', { name: 'コール結果を保存する' });
    await dialog.getByRole('combobox', { name: 'コール結果を保存' }).selectOption('no-answer');
    await dialog.getByRole('button', { name: 'コール結果を保存' }).click();
    await page.getByRole('button', { name: '顧客にコール' }).waitFor();
  }
  results.click_to_phone = summary(clickToPhone);
  results.click_to_sent_in_page = summary(clickToSent);
  // click_to_phone = playwright's click until the DOM event + the rest.
  results.driver_click_to_dom_click = summary(driverToDomClick);
  results.dom_click_to_phone = summary(domClickToPhone);
  results.start_to_call_bar = summary(startToBar);

  // The native desk: `desk request` (a process: connect, join, catch up, push,
  // wait for the commit) until the phone shows the request.
  const deskToPhone = [];
  for (let i = 0; i < RUNS; i++) {
    const seen = phone.seen.length;
    const start = performance.now();
    const out = execFileSync(BIN, ['--json', '--data', world.repDesk, 'desk', 'request', 'cus-1', '--number', NUMBER], { encoding: 'utf8' });
    const call = JSON.parse(out).call;
    await phone.waitFor((e) => e.event === 'call-requested' && e.call === call && phone.seen.indexOf(e) >= seen);
    deskToPhone.push(performance.now() - start);
    cli(world.repDesk, ['desk', 'cancel', call]);
  }
  results.native_desk_request_to_phone = summary(deskToPhone);
  results.targets_ms = { webtransport_connect: 50, click_to_phone: 50, start_to_call_bar: 50 };
  results.binary = BIN;
  console.log(JSON.stringify(results, null, 2));
} finally {
  await browser.close();
  await world.close();
}


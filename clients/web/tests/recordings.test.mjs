// A recorded call seen from the page: the phone's upload state relayed while it
// waits for Wi-Fi, the recording played by the browser's own <audio> element
// (range requests on a signed link) to its end, the same bytes the CLI
// downloads, and deletion by a manager: the bytes leave the server's store and
// every replica keeps the tombstone.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, existsSync } from 'node:fs';
import path from 'node:path';
import { OWNER, cli, inWorld, logInPage, screenshot, seriousViolations } from './harness.mjs';

/** The server's stored recordings (blob files). */
function storedBlobs(world) {
  const found = [];
  const walk = (dir) => {
    if (!existsSync(dir)) return;
    for (const entry of readdirSync(dir, { withFileTypes: true })) {
      const full = path.join(dir, entry.name);
      if (entry.isDirectory()) walk(full);
      else found.push(full);
    }
  };
  walk(path.join(world.dir('server'), 'recordings', 'blobs'));
  return found;
}

const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex');

async function until(what, check, ms = 20_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test('a recorded call waits for Wi-Fi, plays in the page to its end, and a manager deletes it for good', async () => {
  await inWorld('recordings-1', {}, async (world, browser) => {
    const phone = world.phoneRun({}, ['--network', 'cellular', '--sample-rate', '8000']);
    await phone.waitFor((e) => e.event === 'caught-up');
    const page = await browser.newPage();
    const media = [];
    page.on('response', (r) => {
      if (r.url().includes('/api/recordings/')) media.push(r.status());
    });
    await logInPage(page, world, 'rep@acme.example');
    await page.getByRole('link', { name: '株式会社さくら物産' }).click();
    await page.getByTestId('presence').filter({ hasText: 'スマートフォン接続中' }).waitFor({ timeout: 15_000 });

    // A call with the recording switch on (the default), recorded for 2 s.
    assert.ok(await page.getByRole('switch', { name: '録音' }).isChecked());
    await page.getByRole('button', { name: '顧客にコール' }).click();
    const requested = await phone.waitFor((e) => e.event === 'call-requested');
    const call = requested.call;
    cli(world.phone, ['phone', 'start', call]);
    await phone.waitFor((e) => e.event === 'recording-started' && e.call === call);
    await page.getByTestId('call-bar').waitFor({ timeout: 15_000 });
    await new Promise((r) => setTimeout(r, 2_000));
    cli(world.phone, ['phone', 'end', call, '--duration', '2']);
    const captured = await phone.waitFor((e) => e.event === 'recording-captured' && e.call === call);
    await page.getByTestId('call-bar').filter({ hasText: 'スマートフォンで終話' }).waitFor({ timeout: 15_000 });
    await page.getByRole('button', { name: '通話を終了' }).click();
    const dialog = page.getByRole('dialog', { name: 'コール結果を保存する' });
    await dialog.getByRole('combobox', { name: 'コール結果を保存' }).selectOption('appointment');
    await page.getByRole('button', { name: 'コール結果を保存' }).click();
    await page.getByRole('status').filter({ hasText: 'コール結果を保存しました' }).waitFor();

    // On cellular the phone keeps it, and says so: the page shows it waiting for Wi-Fi.
    await page.getByRole('tab', { name: 'タイムライン' }).click();
    const recording = page.getByTestId('recording').first();
    await recording.filter({ hasText: '録音はWi-Fi接続を待っています' }).waitFor({ timeout: 15_000 });
    assert.deepEqual(storedBlobs(world), [], 'nothing leaves the phone on cellular');
    await screenshot(page, '30-recording-waiting-for-wifi');
    assert.deepEqual(await seriousViolations(page), [], 'accessibility (waiting recording)');

    // On Wi-Fi it uploads; the page shows it stored with its length and size.
    cli(world.phone, ['phone', 'network', 'wifi']);
    await phone.waitFor((e) => e.event === 'recording-uploaded' && e.call === call);
    await recording.filter({ hasText: '録音あり' }).waitFor({ timeout: 15_000 });
    const words = await recording.getByRole('status').textContent();
    assert.match(words, /録音あり ・ 0:0[2-4] ・ \d+\.\d KiB/, words);
    // A rep may play but not delete.
    assert.equal(await recording.getByRole('button', { name: '録音を削除' }).count(), 0);

    // Played by the browser's own player from a signed link, to its end.
    await recording.getByRole('button', { name: '録音を再生' }).click();
    const player = page.getByTestId('player');
    await player.waitFor();
    await page.waitForFunction(() => document.querySelector('[data-testid="player"]')?.ended === true, null, { timeout: 20_000 });
    const duration = await player.evaluate((a) => a.duration);
    assert.ok(duration > 1.5 && duration < 4, `duration ${duration}`);
    // It seeks: back to the middle, and on to the end again.
    await player.evaluate((a) => {
      a.currentTime = a.duration / 2;
      return a.play();
    });
    await page.waitForFunction(() => document.querySelector('[data-testid="player"]')?.ended === true, null, { timeout: 20_000 });
    // The player asks by range (Chromium's first media request is `bytes=0-`).
    assert.ok(media.includes(206) && media.every((s) => s === 200 || s === 206), `media answers ${media}`);
    // An explicit range from the page: exactly those bytes.
    const src0 = await player.getAttribute('src');
    const ranged = await page.evaluate(async (url) => {
      const r = await fetch(url, { headers: { Range: 'bytes=44-1067' } });
      return { status: r.status, range: r.headers.get('content-range'), length: (await r.arrayBuffer()).byteLength };
    }, src0);
    assert.deepEqual(ranged, { status: 206, range: `bytes 44-1067/${captured.bytes}`, length: 1024 });
    await screenshot(page, '31-recording-played');
    assert.deepEqual(await seriousViolations(page), [], 'accessibility (player)');

    // The bytes the page played are the bytes the CLI downloads, and the phone captured.
    const src = await player.getAttribute('src');
    const played = Buffer.from(await page.evaluate(async (url) => Array.from(new Uint8Array(await (await fetch(url)).arrayBuffer())), src));
    const out = path.join(world.root, 'downloaded.wav');
    const got = cli(world.repDesk, ['desk', 'recording', 'get', call, '-o', out]);
    const downloaded = readFileSync(out);
    assert.equal(played.length, captured.bytes);
    assert.equal(sha256(played), got.recording.sha256);
    assert.ok(played.equals(downloaded), 'the page and the CLI have identical bytes');
    assert.equal(storedBlobs(world).length, 1);

    // The owner deletes it from the call detail (after confirming).
    const owner = await (await browser.newContext()).newPage();
    await logInPage(owner, world, OWNER);
    await owner.goto(`${world.page}#/customers/cus-1/history/${encodeURIComponent(call)}`);
    const detail = owner.getByTestId('recording');
    await detail.filter({ hasText: '録音あり' }).waitFor({ timeout: 15_000 });
    await detail.getByRole('button', { name: '録音を削除' }).click();
    await detail.getByText('録音を削除しますか？').waitFor();
    await screenshot(owner, '32-recording-delete-confirm');
    assert.deepEqual(await seriousViolations(owner), [], 'accessibility (delete confirmation)');
    await detail.getByRole('button', { name: '削除する' }).click();
    await detail.filter({ hasText: `録音は削除されました（${OWNER}` }).waitFor({ timeout: 15_000 });

    // Gone from the store; tombstoned on the rep's page, the desk and the phone.
    await until('the blob store to lose the bytes', () => storedBlobs(world).length === 0);
    await recording.filter({ hasText: '録音は削除されました' }).waitFor({ timeout: 15_000 });
    assert.equal(await page.getByTestId('player').count(), 0, 'the player goes with the recording');
    await until('the desk to see the tombstone', () => cli(world.repDesk, ['desk', 'show', call]).recording_state === 'deleted');
    await until('the phone to see the tombstone', () => cli(world.phone, ['phone', 'show', call]).recording_state === 'deleted');
    const gone = await page.evaluate(async (url) => (await fetch(url)).status, src);
    assert.equal(gone, 404, 'the link signed before plays nothing');
  });
});

// The page's IndexedDB written by an earlier release opens with this release's
// page: the session, the customers and a result saved offline (never sent) are
// all there, and the result reaches the upgraded server exactly once.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdirSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { REP, WEB, World, cli, launchBrowser, screenshot } from './harness.mjs';
import { restoreIndexedDb } from './idb.mjs';

/** Made by the recordings release (`fixtures/old-releases/make-v7-page.mjs`). */
const FIXTURE = path.join(WEB, '..', '..', 'fixtures', 'old-releases', 'v7-page');

test('an IndexedDB from the recordings release opens, and its unsent result reaches the server once', async () => {
  const { call, databases } = JSON.parse(readFileSync(path.join(FIXTURE, 'indexeddb.json'), 'utf8'));
  const world = new World();
  world.root = mkdtempSync(path.join(tmpdir(), 'callsync-web-'));
  mkdirSync(world.dir('server'));
  for (const file of ['callsync.sqlite', 'server-cert.der', 'server-key.der']) {
    cpSync(path.join(FIXTURE, file), path.join(world.dir('server'), file));
  }
  await world.startServer();
  const browser = await launchBrowser();
  try {
    const page = await browser.newPage();
    // The page's origin, without the page: the databases go in first, as the
    // earlier release left them in this browser.
    await page.goto(new URL('/api/transport', world.page).href);
    await restoreIndexedDb(page, databases);
    await page.goto(world.page);
    await page.getByTestId('connection').filter({ hasText: 'オンライン' }).waitFor({ timeout: 30_000 });
    await page.getByRole('link', { name: '株式会社さくら物産' }).waitFor();

    // On the server, through a desk of the same rep: the result, once.
    const desk = world.dir('desk');
    world.login(desk, 'desk', REP);
    cli(desk, ['desk', 'open', 'cus-1']);
    let shown;
    for (let i = 0; i < 100; i++) {
      shown = cli(desk, ['desk', 'show', call]);
      if (shown.results.length > 0) break;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    assert.equal(shown.results.length, 1, JSON.stringify(shown));
    assert.equal(shown.results[0].memo, 'v7 オフラインで保存');
    assert.equal(shown.phase, 'completed', JSON.stringify(shown));
    assert.deepEqual(shown.anomalies, []);
    await screenshot(page, '30-upgraded-indexeddb');
  } finally {
    await browser.close();
    await world.close();
  }
});

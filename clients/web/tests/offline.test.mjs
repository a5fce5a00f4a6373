// The network goes away mid-flow: the result saved offline survives and reaches
// the server when it returns, and the page opens with no network at all.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cli, inWorld, logInPage, screenshot } from './harness.mjs';

test('a result saved with the server gone reaches it later; a reload offline still opens the customer', async () => {
  await inWorld('offline-7', {}, async (world, browser) => {
    const phone = world.phoneRun();
    await phone.waitFor((e) => e.event === 'caught-up');
    const page = await browser.newPage();
    await logInPage(page, world, 'rep@acme.example');
    await page.getByRole('link', { name: '株式会社さくら物産' }).waitFor();

    // Once the service worker keeps the page, a reload takes the build's
    // content-named files (the engine above all) from it, not the network.
    await page.evaluate(() => navigator.serviceWorker.ready.then(() => undefined));
    const fetchedByWorker = [];
    const onRequest = (request) => {
      if (request.serviceWorker() && new URL(request.url()).pathname.startsWith('/assets/')) fetchedByWorker.push(request.url());
    };
    page.context().on('request', onRequest);
    const engineServed = page.waitForResponse((r) => r.url().endsWith('.wasm'));
    await page.reload();
    const engine = await engineServed;
    await page.getByRole('link', { name: '株式会社さくら物産' }).waitFor();
    page.context().off('request', onRequest);
    assert.ok(engine.fromServiceWorker(), 'the engine comes from the service worker');
    assert.deepEqual(fetchedByWorker, [], 'the service worker fetched none of the build’s files again');

    // A build file that does not exist is 404 and is not kept under its name;
    // the worker keeps the page and the build's files, nothing else.
    const kept = await page.evaluate(async () => {
      const missing = await fetch('/assets/missing-0123.js');
      await fetch('/elsewhere/not-a-file');
      await new Promise((resolve) => setTimeout(resolve, 300));
      const cache = await caches.open('callsync-page-v1');
      const keys = (await cache.keys()).map((request) => new URL(request.url).pathname);
      return { status: missing.status, keys };
    });
    assert.equal(kept.status, 404);
    assert.ok(!kept.keys.includes('/assets/missing-0123.js'), JSON.stringify(kept.keys));
    assert.ok(kept.keys.every((key) => key === '/' || key.startsWith('/assets/')), JSON.stringify(kept.keys));

    await page.getByRole('link', { name: '株式会社さくら物産' }).click();
    await page.getByTestId('presence').filter({ hasText: 'スマートフォン接続中' }).waitFor({ timeout: 15_000 });
    await page.getByRole('button', { name: '顧客にコール' }).click();
    const requested = await phone.waitFor((e) => e.event === 'call-requested');
    cli(world.phone, ['phone', 'start', requested.call]);
    cli(world.phone, ['phone', 'end', requested.call, '--duration', '42']);
    await page.getByTestId('call-bar').filter({ hasText: 'スマートフォンで終話' }).waitFor({ timeout: 15_000 });

    // The server goes away mid-flow.
    await world.stopServer();
    await page.getByTestId('connection').filter({ hasText: 'オフライン' }).waitFor({ timeout: 15_000 });
    await page.getByRole('button', { name: '通話を終了' }).click();
    const dialog = page.getByRole('dialog', { name: 'コール結果を保存する' });
    await dialog.getByRole('combobox', { name: 'コール結果を保存' }).selectOption({ index: 1 });
    await page.getByLabel('メモ').fill('オフラインで保存');
    await page.getByRole('button', { name: 'コール結果を保存' }).click();
    await page.getByRole('status').filter({ hasText: 'この端末に保存しました' }).waitFor();
    await screenshot(page, '12-saved-offline');

    // A reload with the network gone still opens the customer and the saved result.
    await page.reload();
    await page.getByRole('heading', { name: '株式会社さくら物産' }).waitFor({ timeout: 15_000 });
    await page.getByRole('tab', { name: 'コール履歴' }).click();
    await page.locator('table a').first().click();
    await page.getByText('オフラインで保存').waitFor();
    await page.goto(`${world.page}#/customers`);
    await page.getByRole('link', { name: '株式会社さくら物産' }).waitFor();
    await screenshot(page, '13-offline-reload');

    // The server returns: the page reconnects by itself and hands the result over.
    await world.startServer();
    await page.getByTestId('connection').filter({ hasText: 'オンライン' }).waitFor({ timeout: 30_000 });
    await phone.waitFor((e) => e.event === 'call-updated' && e.call === requested.call && e.phase === 'completed', 30_000);
    const shown = cli(world.phone, ['phone', 'show', requested.call]);
    assert.equal(shown.results.at(-1).memo, 'オフラインで保存');
    // Offline the page cannot ask the rules: the rep's pick is saved as made.
    assert.equal(shown.results.at(-1).decision, undefined);
  });
});

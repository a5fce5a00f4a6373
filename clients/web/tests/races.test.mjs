// The start limit and the cancel/start race, on the page and on the phone.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cli, inWorld, logInPage, screenshot } from './harness.mjs';

async function openCallTab(page, world) {
  await logInPage(page, world, 'rep@acme.example');
  await page.getByRole('link', { name: '株式会社さくら物産' }).click();
  await page.getByTestId('presence').filter({ hasText: 'スマートフォン接続中' }).waitFor({ timeout: 15_000 });
}

test('the start limit passing shows the manual message', async () => {
  // The 1-minute limit, shortened to 3 seconds for the test.
  await inWorld('races-3', { global: ['--start-limit-secs', '3'] }, async (world, browser) => {
    const phone = world.phoneRun();
    await phone.waitFor((e) => e.event === 'caught-up');
    const page = await browser.newPage();
    await openCallTab(page, world);
    await page.getByRole('button', { name: '顧客にコール' }).click();
    await page.getByTestId('waiting').waitFor();
    await phone.waitFor((e) => e.event === 'call-requested');
    const message = page.getByRole('alert').filter({
      hasText: 'モバイルアプリの「コール開始」ボタンを押さなかったため、開始されたコールはキャンセルされました。',
    });
    await message.waitFor({ timeout: 20_000 });
    assert.equal(await page.getByTestId('waiting').count(), 0, 'the waiting message is gone');
    await screenshot(page, '09-start-limit-passed');
    await phone.waitFor((e) => e.event === 'call-updated' && e.phase === 'expired');
  });
});

test('cancel racing the phone start is said on the page and by the phone', async () => {
  await inWorld('races-4', {}, async (world, browser) => {
    const page = await browser.newPage();
    // The phone is connected while the page asks, then goes away…
    let phone = world.phoneRun();
    await phone.waitFor((e) => e.event === 'caught-up');
    await openCallTab(page, world);
    await page.getByRole('button', { name: '顧客にコール' }).click();
    const requested = await phone.waitFor((e) => e.event === 'call-requested');
    await phone.stop();
    // …the rep cancels on the page while the phone, offline, starts the call.
    await page.getByRole('button', { name: 'コールをキャンセル' }).click();
    cli(world.phone, ['phone', 'start', requested.call]);
    // When they meet, both say what happened in words.
    phone = world.phoneRun();
    const race = await phone.waitFor((e) => e.event === 'call-updated' && e.call === requested.call && e.flags.includes('started-after-cancel'));
    assert.match(race.advice_ja.join(''), /スマートフォンで通話を終了してください/);
    await page
      .getByRole('alert')
      .filter({ hasText: 'キャンセルした後にスマートフォンでコールが開始されました' })
      .waitFor({ timeout: 20_000 });
    await screenshot(page, '10-cancel-race');
  });
});

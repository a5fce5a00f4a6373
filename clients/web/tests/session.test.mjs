// The page's device session: one clock (the server's) however wrong the page's
// or the phone's own is, logout with unsent work, sessions ended while the page
// is open, a second user on the same browser, and an IndexedDB that fails.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cli, CONTRACT_REQUIRED_JA, inWorld, logInPage, PASSWORD, screenshot, skewPageClock } from './harness.mjs';

const TEN_MINUTES = 10 * 60 * 1000;

async function openCustomer(page) {
  await page.getByRole('link', { name: '株式会社さくら物産' }).click();
  await page.getByTestId('presence').filter({ hasText: 'スマートフォン接続中' }).waitFor({ timeout: 15_000 });
}

/** The whole call with the page `pageSkew` ms off and the phone `phoneSkewSecs` s off. */
async function wholeCallWithSkews(name, pageSkew, phoneSkewSecs) {
  await inWorld(name, {}, async (world, browser) => {
    const env = { CALLSYNC_CLOCK_SKEW_SECS: String(phoneSkewSecs) };
    const phone = world.phoneRun(env);
    await phone.waitFor((e) => e.event === 'caught-up');
    const page = await browser.newPage();
    await skewPageClock(page, pageSkew);
    await logInPage(page, world, 'rep@acme.example');
    await openCustomer(page);
    await page.getByRole('button', { name: '顧客にコール' }).click();
    const requested = await phone.waitFor((e) => e.event === 'call-requested');
    // The start limit compares the page's stamp with the phone's: both are the
    // server's time, so a phone far off its own clock starts in time.
    const started = cli(world.phone, ['phone', 'start', requested.call], env);
    assert.equal(started.phase, 'in-call');
    await page.getByTestId('call-bar').waitFor({ timeout: 15_000 });
    cli(world.phone, ['phone', 'end', requested.call, '--duration', '20'], env);
    await page.getByTestId('call-bar').filter({ hasText: 'スマートフォンで終話' }).waitFor({ timeout: 15_000 });
    await page.getByRole('button', { name: '通話を終了' }).click();
    const dialog = page.getByRole('dialog', { name: 'コール結果を保存する' });
    await dialog.getByRole('combobox', { name: 'コール結果を保存' }).selectOption('appointment');
    await page.getByRole('button', { name: 'コール結果を保存' }).click();
    // Online, the server's rules decide: its 5-minute window holds, since the
    // page asks with the server's time.
    await page.getByRole('status').filter({ hasText: 'コール結果を保存しました' }).waitFor({ timeout: 15_000 });
    await phone.waitFor((e) => e.event === 'call-updated' && e.call === requested.call && e.phase === 'completed', 30_000);
    const shown = cli(world.phone, ['phone', 'show', requested.call], env);
    const result = shown.results.at(-1);
    assert.equal(result.decision.plugin.id, 'standard', 'decided by the rules');
    const real = Date.now();
    for (const stamp of [shown.origin_stamp, result.stamp]) {
      assert.ok(Math.abs(stamp.at - real) < 60_000, `on the server's clock: ${JSON.stringify(stamp)}`);
      assert.ok(Math.abs(stamp.device_at - stamp.at - pageSkew) < 5_000, `the page's own reading beside: ${JSON.stringify(stamp)}`);
    }
    assert.equal(shown.results.length, 1);
  });
}

test('a page ten minutes fast and a phone ten minutes slow complete a call to a decided result', async () => {
  await wholeCallWithSkews('session-1', TEN_MINUTES, -600);
});

test('a page ten minutes slow and a phone ten minutes fast complete a call to a decided result', async () => {
  await wholeCallWithSkews('session-2', -TEN_MINUTES, 600);
});

test('logging out with a result saved offline warns, keeps it, and delivers it at the next login', async () => {
  await inWorld('session-3', {}, async (world, browser) => {
    const phone = world.phoneRun();
    await phone.waitFor((e) => e.event === 'caught-up');
    const page = await browser.newPage();
    await logInPage(page, world, 'rep@acme.example');
    await openCustomer(page);
    await page.getByRole('button', { name: '顧客にコール' }).click();
    const requested = await phone.waitFor((e) => e.event === 'call-requested');
    cli(world.phone, ['phone', 'start', requested.call]);
    cli(world.phone, ['phone', 'end', requested.call, '--duration', '12']);
    await page.getByTestId('call-bar').filter({ hasText: 'スマートフォンで終話' }).waitFor({ timeout: 15_000 });
    await world.stopServer();
    await page.getByTestId('connection').filter({ hasText: 'オフライン' }).waitFor({ timeout: 15_000 });
    await page.getByRole('button', { name: '通話を終了' }).click();
    const dialog = page.getByRole('dialog', { name: 'コール結果を保存する' });
    await dialog.getByRole('combobox', { name: 'コール結果を保存' }).selectOption({ index: 1 });
    await page.getByLabel('メモ').fill('ログアウト前に保存');
    await page.getByRole('button', { name: 'コール結果を保存' }).click();
    await page.getByRole('status').filter({ hasText: 'この端末に保存しました' }).waitFor();

    // Logging out says how many results are unsent, in the manual's register.
    await page.getByRole('button', { name: 'ログアウト' }).click();
    const warning = page.getByRole('alertdialog');
    await warning.filter({ hasText: '未送信のコール結果が 1 件あります' }).waitFor();
    await screenshot(page, '16-logout-unsent');
    await warning.getByRole('button', { name: 'ログアウトする' }).click();
    await page.getByLabel('メールアドレス').waitFor({ timeout: 15_000 });

    // The server returns; the same rep logs in again on this browser: the result
    // is delivered, once.
    await world.startServer();
    await logInPage(page, world, 'rep@acme.example');
    await page.getByTestId('connection').filter({ hasText: 'オンライン' }).waitFor({ timeout: 30_000 });
    await phone.waitFor((e) => e.event === 'call-updated' && e.call === requested.call && e.phase === 'completed', 30_000);
    const shown = cli(world.phone, ['phone', 'show', requested.call]);
    assert.equal(shown.results.length, 1);
    assert.equal(shown.results[0].memo, 'ログアウト前に保存');
    assert.equal(shown.results[0].kept_as_picked, 'offline');
  });
});

test('a contract revoked or a password reset while the page is open goes back to the login, saying why', async () => {
  await inWorld('session-4', {}, async (world, browser) => {
    const page = await browser.newPage();
    await logInPage(page, world, 'rep@acme.example');
    await page.getByRole('link', { name: '株式会社さくら物産' }).waitFor({ timeout: 15_000 });
    await page.getByTestId('connection').filter({ hasText: 'オンライン' }).waitFor();
    cli(world.admin, ['admin', 'revoke', 'rep@acme.example']);
    const alert = page.getByRole('alert');
    await alert.filter({ hasText: CONTRACT_REQUIRED_JA }).waitFor({ timeout: 15_000 });
    assert.equal(await page.getByRole('link', { name: '株式会社さくら物産' }).count(), 0, 'no customer data on screen');
    await screenshot(page, '17-contract-revoked');
    // A reload shows the same: the session is over.
    await page.reload();
    await page.getByLabel('メールアドレス').waitFor({ timeout: 15_000 });
    assert.equal(await page.getByRole('link', { name: '株式会社さくら物産' }).count(), 0);

    // Granted again and logged in; then an admin resets the password.
    cli(world.admin, ['admin', 'grant', 'rep@acme.example']);
    await logInPage(page, world, 'rep@acme.example');
    await page.getByTestId('connection').filter({ hasText: 'オンライン' }).waitFor({ timeout: 15_000 });
    cli(world.admin, ['admin', 'reset-password', 'rep@acme.example'], { CALLSYNC_NEW_PASSWORD: PASSWORD });
    await page.getByRole('alert').filter({ hasText: 'セッションが終了しました' }).waitFor({ timeout: 15_000 });
    await page.getByLabel('メールアドレス').waitFor();
  });
});

test('a second user on the same browser logs in with a device of their own and sees only their data', async () => {
  await inWorld('session-5', {}, async (world, browser) => {
    cli(world.admin, ['admin', 'add-user', 'other@acme.example', '--role', 'user', '--contract']);
    cli(world.admin, ['desk', 'create', '--id', 'cus-2', '--company', '有限会社みどり商店', '--contact', '鈴木', '--number', '代表:06-1234-5678']);
    cli(world.admin, ['admin', 'visibility', 'on']);
    const page = await browser.newPage();
    await logInPage(page, world, 'rep@acme.example');
    await page.getByRole('link', { name: '株式会社さくら物産' }).waitFor({ timeout: 15_000 });
    await page.getByRole('button', { name: 'ログアウト' }).click();
    await page.getByLabel('メールアドレス').waitFor({ timeout: 15_000 });
    await logInPage(page, world, 'other@acme.example');
    await page.getByTestId('connection').filter({ hasText: 'オンライン' }).waitFor({ timeout: 15_000 });
    await page.getByText('顧客がありません。').waitFor({ timeout: 15_000 });
    assert.equal(await page.getByRole('link', { name: '株式会社さくら物産' }).count(), 0, 'not the first user’s data');
  });
});

test('an IndexedDB that cannot save sends nothing and tells the rep', async () => {
  await inWorld('session-6', {}, async (world, browser) => {
    const phone = world.phoneRun();
    await phone.waitFor((e) => e.event === 'caught-up');
    const page = await browser.newPage();
    await page.addInitScript(() => {
      const put = IDBObjectStore.prototype.put;
      IDBObjectStore.prototype.put = function (...args) {
        if (globalThis.__failStorage) throw new DOMException('the quota is used up', 'QuotaExceededError');
        return put.apply(this, args);
      };
    });
    await logInPage(page, world, 'rep@acme.example');
    await openCustomer(page);
    await page.evaluate(() => {
      globalThis.__failStorage = true;
    });
    await page.getByRole('button', { name: '顧客にコール' }).click();
    await page.getByTestId('storage-failed').filter({ hasText: '保存できませんでした' }).waitFor({ timeout: 15_000 });
    await screenshot(page, '18-storage-failed');
    // Nothing reached the server: the phone was never asked.
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    assert.equal(phone.seen.filter((e) => e.event === 'call-requested').length, 0);
    assert.equal(await page.getByTestId('waiting').count(), 0, 'no request shown as made');
  });
});

// The rep's whole call flow in a real browser, against a real server and a real
// phone process.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cli, inWorld, logInPage, screenshot, seriousViolations } from './harness.mjs';

async function expectNoSeriousViolations(page, screen) {
  const violations = await seriousViolations(page);
  assert.deepEqual(violations, [], `accessibility (${screen})`);
}

test('log in, open a customer, call through the phone, end, save the mandatory result', async () => {
  await inWorld('flow-1', {}, async (world, browser) => {
    const phone = world.phoneRun();
    await phone.waitFor((e) => e.event === 'caught-up');
    const page = await browser.newPage();
    await page.goto(world.page);
    await screenshot(page, '01-login');
    await expectNoSeriousViolations(page, 'login');
    await logInPage(page, world, 'rep@acme.example');

    // The customer list, from the server.
    const customer = page.getByRole('link', { name: '株式会社さくら物産' });
    await customer.waitFor({ timeout: 15_000 });
    await page.getByTestId('connection').filter({ hasText: 'オンライン' }).waitFor();
    await screenshot(page, '02-customers');
    await expectNoSeriousViolations(page, 'customers');
    await customer.click();

    // The Call tab: the phone's presence beside the origin.
    await page.getByRole('tab', { name: 'コール', exact: true }).waitFor();
    await page.getByTestId('presence').filter({ hasText: 'スマートフォン接続中' }).waitFor({ timeout: 15_000 });
    assert.equal(await page.getByLabel('発信元電話番号').inputValue(), 'phone-rep');
    await screenshot(page, '03-call-tab');
    await expectNoSeriousViolations(page, 'call tab');

    // 顧客にコール → the waiting message with Cancel; the phone is asked.
    await page.getByRole('button', { name: '顧客にコール' }).click();
    await page.getByTestId('waiting').waitFor();
    assert.ok(await page.getByRole('button', { name: 'コールをキャンセル' }).isVisible());
    await screenshot(page, '04-waiting');
    const requested = await phone.waitFor((e) => e.event === 'call-requested');
    assert.equal(requested.number.replace(/\D/g, ''), '0312345678', 'the number picked on the page');

    // The phone starts: the call bar appears by itself.
    cli(world.phone, ['phone', 'start', requested.call]);
    await page.getByTestId('call-bar').waitFor({ timeout: 15_000 });
    assert.ok(!(await page.getByTestId('waiting').isVisible()));
    await screenshot(page, '05-call-bar');
    await expectNoSeriousViolations(page, 'call bar');

    // The phone ends, then the browser: the mandatory result form.
    cli(world.phone, ['phone', 'end', requested.call, '--duration', '95']);
    await page.getByTestId('call-bar').filter({ hasText: 'スマートフォンで終話' }).waitFor({ timeout: 15_000 });
    await page.getByRole('button', { name: '通話を終了' }).click();
    const dialog = page.getByRole('dialog', { name: 'コール結果を保存する' });
    await dialog.waitFor();
    await page.keyboard.press('Escape');
    assert.ok(await dialog.isVisible(), 'Escape does not close the result form');
    await page.getByRole('button', { name: 'コール結果を保存' }).click();
    await page.getByRole('alert').filter({ hasText: 'コール結果を選択してください' }).waitFor();
    assert.ok(await dialog.isVisible(), 'saving with no result keeps the form');
    await screenshot(page, '06-result-form');
    await expectNoSeriousViolations(page, 'result form');

    const select = dialog.getByRole('combobox', { name: 'コール結果を保存' });
    const options = await select.locator('option').allTextContents();
    assert.ok(options.length > 2, `the tenant's result types: ${options}`);
    await select.selectOption('appointment');
    await page.getByLabel('メモ').fill('来週再度ご連絡');
    await page.getByRole('button', { name: 'コール結果を保存' }).click();
    await page.getByRole('status').filter({ hasText: 'コール結果を保存しました' }).waitFor();
    assert.equal(await dialog.count(), 0, 'the form closes once saved');

    // The timeline and the call detail show it; so does the phone. The tabs
    // answer the arrow keys: from the selected コール tab, → opens タイムライン.
    await page.getByRole('tab', { name: 'コール', exact: true }).focus();
    await page.keyboard.press('ArrowRight');
    const timelineTab = page.getByRole('tab', { name: 'タイムライン' });
    await timelineTab.and(page.locator('[aria-selected="true"]')).waitFor();
    assert.ok(await timelineTab.evaluate((el) => el === document.activeElement), 'focus follows the selection');
    await page.getByText('来週再度ご連絡').or(page.getByText('結果')).first().waitFor();
    await screenshot(page, '07-timeline');
    await expectNoSeriousViolations(page, 'timeline');
    await page.getByRole('tab', { name: 'コール履歴' }).click();
    await page.locator('table a').first().click();
    await page.getByRole('heading', { name: 'コール詳細' }).waitFor();
    await page.getByText('来週再度ご連絡').waitFor();
    await screenshot(page, '08-call-detail');
    await expectNoSeriousViolations(page, 'call detail');

    await phone.waitFor((e) => e.event === 'call-updated' && e.call === requested.call && e.phase === 'completed');
    const shown = cli(world.phone, ['phone', 'show', requested.call]);
    assert.equal(shown.phase, 'completed');
    assert.equal(shown.results.at(-1).memo, '来週再度ご連絡');
    // Decided by the tenant's rules on the server, and re-checked when admitted.
    assert.equal(shown.results.at(-1).decision.plugin.id, 'standard');

    // A rep has no dashboard; asking anyway is refused by the server.
    assert.equal(await page.getByRole('link', { name: 'コール実績' }).count(), 0);
    await page.goto(`${world.page}#/dashboard`);
    await page.getByRole('alert').filter({ hasText: 'マネージャー' }).waitFor();

    // The owner's dashboard: the rep's call, reached (アポ獲得 counts as 本人通話).
    const owner = await (await browser.newContext()).newPage();
    await logInPage(owner, world, 'owner@acme.example');
    await owner.getByRole('link', { name: 'コール実績' }).click();
    const row = owner.getByTestId('stats').getByRole('row', { name: /rep@acme\.example/ });
    await row.waitFor({ timeout: 15_000 });
    assert.deepEqual(await row.getByRole('cell').allTextContents(), ['1', '100%']);
    await owner.getByTestId('chart').waitFor();
    await screenshot(owner, '14-dashboard');
    await expectNoSeriousViolations(owner, 'dashboard');
  });
});

test('a manual call (手動コール) is logged with its result and reaches the server', async () => {
  await inWorld('flow-2', {}, async (world, browser) => {
    const page = await browser.newPage();
    await logInPage(page, world, 'rep@acme.example');
    await page.getByRole('link', { name: '株式会社さくら物産' }).click();
    await page.getByRole('button', { name: '手動コール' }).click();
    const dialog = page.getByRole('dialog', { name: '手動コール' });
    await dialog.getByRole('combobox', { name: 'コール結果を保存' }).selectOption('send-materials');
    await dialog.getByLabel('メモ').fill('折り返しの電話');
    await screenshot(page, '15-manual-call');
    assert.deepEqual(await seriousViolations(page), []);
    await dialog.getByRole('button', { name: 'コール結果を保存' }).click();
    await page.getByRole('status').filter({ hasText: 'コール結果を保存しました' }).waitFor();
    await page.getByRole('tab', { name: 'コール履歴' }).click();
    await page.getByRole('cell', { name: '資料送付' }).waitFor();
    // The server has it: the rep's desk (online) sees the logged call and result.
    const calls = cli(world.repDesk, ['desk', 'calls']);
    assert.equal(calls.length, 1, JSON.stringify(calls));
    assert.equal(calls[0].phase, 'completed');
    const shown = cli(world.repDesk, ['desk', 'show', calls[0].call]);
    assert.equal(shown.origin.kind, 'manual');
    assert.equal(shown.results.at(-1).memo, '折り返しの電話');
  });
});

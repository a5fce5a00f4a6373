// The page in the manual's words: the timeline says what happened (no raw event
// names), the result form's choices are distinct and the statuses are the
// tenant's, English mode is English, and offline the phones are unknown, not
// missing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { inWorld, logInPage, screenshot } from './harness.mjs';

const RAW_KINDS = ['requested', 'cancelled', 'manual-call', 'result-saved', 'started', 'phone-ended', 'browser-ended'];

test('the timeline, the result form and English mode speak in words', async () => {
  await inWorld('words-1', {}, async (world, browser) => {
    const page = await browser.newPage();
    await logInPage(page, world, 'rep@acme.example');
    await page.getByRole('link', { name: '株式会社さくら物産' }).click();
    await page.getByRole('button', { name: '手動コール' }).click();
    const dialog = page.getByRole('dialog', { name: '手動コール' });
    const type = dialog.getByRole('combobox', { name: 'コール結果を保存' });
    await type.selectOption('appointment');
    // The options read as distinct words, none twice.
    const options = await dialog.locator('fieldset label.inline').allTextContents();
    assert.equal(new Set(options).size, options.length, `distinct: ${options}`);
    assert.ok(options.includes('なし'), `${options}`);
    // The status is a choice of the tenant's statuses.
    const statuses = await dialog.getByRole('combobox', { name: '顧客ステータス' }).locator('option').allTextContents();
    assert.ok(statuses.includes('アポ獲得'), `${statuses}`);
    await dialog.getByLabel('メモ').fill('資料を送付予定');
    await dialog.getByRole('button', { name: 'コール結果を保存' }).click();
    await page.getByRole('status').filter({ hasText: 'コール結果を保存しました' }).waitFor();

    await page.getByRole('tab', { name: 'タイムライン' }).click();
    const timeline = page.locator('ol.timeline');
    await timeline.getByText('手動コールを記録').waitFor();
    const text = await timeline.textContent();
    assert.match(text, /コール結果を保存/);
    assert.match(text, /資料を送付予定/, 'the memo is shown');
    for (const raw of RAW_KINDS) assert.ok(!text.includes(raw), `no raw kind ${raw}: ${text}`);
    await screenshot(page, '20-timeline-words');

    // English: the same screen in English, the data as it is.
    await page.getByRole('button', { name: 'English' }).click();
    await page.getByRole('tab', { name: 'Timeline' }).waitFor();
    const english = await page.locator('ol.timeline').textContent();
    assert.match(english, /Manual call logged/);
    assert.match(english, /Call result saved/);
    assert.ok(!/[\u3040-\u30ff]/.test(english.replace('資料を送付予定', '').replace(/株式会社さくら物産|さくら/g, '')), `English only but the data: ${english}`);
    const nav = await page.getByRole('navigation').textContent();
    assert.ok(!/[\u3040-\u30ff\u4e00-\u9fff]/.test(nav), `the navigation in English: ${nav}`);
    await page.getByRole('button', { name: '日本語' }).click();

    // Offline, the call tab does not claim there are no phones.
    await world.stopServer();
    await page.getByTestId('connection').filter({ hasText: 'オフライン' }).waitFor({ timeout: 15_000 });
    await page.reload();
    await page.getByRole('tab', { name: 'コール', exact: true }).click();
    const origin = await page.getByLabel('発信元電話番号').locator('option').allTextContents();
    assert.ok(origin.some((o) => o.includes('接続が戻るまでわかりません')), `${origin}`);
  });
});

test('a recall picked in the result form is on the 再コール list, in either language', async () => {
  await inWorld('words-recall', {}, async (world, browser) => {
    const page = await browser.newPage();
    await logInPage(page, world, 'rep@acme.example');
    await page.getByRole('link', { name: '再コール' }).click();
    await page.getByText('再コール予定はありません。').waitFor({ timeout: 15_000 });

    await page.getByRole('link', { name: '顧客情報' }).click();
    await page.getByRole('link', { name: '株式会社さくら物産' }).click();
    await page.getByRole('button', { name: '手動コール' }).click();
    const dialog = page.getByRole('dialog', { name: '手動コール' });
    await dialog.getByRole('combobox', { name: 'コール結果を保存' }).selectOption('no-answer');
    await dialog.getByRole('radio', { name: '再コール' }).check();
    // Two days ahead in Japan, at 14:00.
    const day = new Date(Date.now() + 2 * 86_400_000).toLocaleDateString('sv-SE', { timeZone: 'Asia/Tokyo' });
    await dialog.getByLabel('日時を選択する', { exact: true }).fill(day);
    await dialog.getByLabel('時刻').selectOption('14:00');
    await dialog.getByRole('button', { name: 'コール結果を保存' }).click();
    await page.getByRole('status').filter({ hasText: 'コール結果を保存しました' }).waitFor();

    await page.getByRole('link', { name: '再コール' }).click();
    const row = page.getByRole('row', { name: /株式会社さくら物産/ });
    await row.waitFor({ timeout: 15_000 });
    const [year, month, date] = day.split('-').map(Number);
    assert.match(await row.textContent(), new RegExp(`${year}/${String(month).padStart(2, '0')}/${String(date).padStart(2, '0')} 14:00`));
    await screenshot(page, '23-recalls');

    await page.getByRole('button', { name: 'English' }).click();
    await page.getByRole('heading', { name: 'Recalls' }).waitFor();
    await page.getByRole('columnheader', { name: 'Recall at' }).waitFor();
    assert.match(await row.textContent(), /14:00/);
    await page.getByRole('button', { name: '日本語' }).click();
  });
});

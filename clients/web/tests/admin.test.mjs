// The admin screens: an owner adds a member, grants and revokes the calling
// contract, changes a role (the member's open page shows the new role's screens)
// and turns 担当者閲覧制限 on, from the page; a user sees none of it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { inWorld, logInPage, PASSWORD, screenshot, seriousViolations } from './harness.mjs';

test('an owner manages members from the page and a changed role reaches the member’s open page', async () => {
  await inWorld('admin-1', {}, async (world, browser) => {
    // The rep's page, open: no dashboard, no admin.
    const rep = await (await browser.newContext()).newPage();
    await logInPage(rep, world, 'rep@acme.example');
    await rep.getByTestId('connection').filter({ hasText: 'オンライン' }).waitFor({ timeout: 15_000 });
    assert.equal(await rep.getByRole('link', { name: '管理' }).count(), 0);
    assert.equal(await rep.getByRole('link', { name: 'コール実績' }).count(), 0);
    await rep.goto(`${world.page}#/admin`);
    await rep.getByRole('alert').filter({ hasText: 'アドミン以上' }).waitFor();

    const owner = await (await browser.newContext()).newPage();
    await logInPage(owner, world, 'owner@acme.example');
    await owner.getByRole('link', { name: '管理' }).click();
    const members = owner.getByTestId('members');
    await members.getByRole('rowheader', { name: 'rep@acme.example' }).waitFor({ timeout: 15_000 });
    await screenshot(owner, '21-admin');
    assert.deepEqual(await seriousViolations(owner), []);

    // Add a member without the contract, then grant it.
    await owner.getByLabel('メールアドレス').fill('new@acme.example');
    await owner.getByLabel('パスワード', { exact: true }).fill(PASSWORD);
    await owner.getByRole('checkbox', { name: '通話契約を付与' }).uncheck();
    await owner.getByRole('button', { name: 'ユーザーを追加' }).click();
    await owner.getByRole('status').filter({ hasText: 'ユーザーを追加しました' }).waitFor();
    const row = members.getByRole('row', { name: /new@acme\.example/ });
    await row.getByText('契約なし').waitFor();
    // Adding the same email again: the server's refusal, in words.
    await owner.getByLabel('メールアドレス').fill('new@acme.example');
    await owner.getByLabel('パスワード', { exact: true }).fill(PASSWORD);
    await owner.getByRole('button', { name: 'ユーザーを追加' }).click();
    await owner.getByRole('alert').filter({ hasText: 'すでに登録されています' }).waitFor();
    await row.getByRole('button', { name: '通話契約を付与' }).click();
    await row.getByText('契約あり').waitFor();
    const fresh = await (await browser.newContext()).newPage();
    await logInPage(fresh, world, 'new@acme.example');
    await fresh.getByTestId('connection').filter({ hasText: 'オンライン' }).waitFor({ timeout: 15_000 });

    // The rep becomes a manager: their open page shows the dashboard link.
    await owner.getByLabel('権限: rep@acme.example').selectOption('manager');
    await owner.getByRole('status').filter({ hasText: '権限を変更しました' }).waitFor();
    await rep.goto(`${world.page}#/customers`);
    await rep.getByRole('link', { name: 'コール実績' }).waitFor({ timeout: 15_000 });

    // 担当者閲覧制限, on from the page.
    await owner.getByRole('button', { name: 'オンにする' }).click();
    await owner.getByRole('status').filter({ hasText: '担当者閲覧制限をオンにしました' }).waitFor();
  });
});

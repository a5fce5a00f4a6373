// The admin screens: an owner adds a member, grants and revokes the calling
// contract, changes a role (the member's open page shows the new role's screens)
// and turns 担当者閲覧制限 on, from the page; a user sees none of it. An admin
// installs result-rule plugins from a file (the install check's verdict in
// words), sees the one in use and rolls back, with the requests the CLI sends.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { cli, inWorld, logInPage, PASSWORD, screenshot, seriousViolations, shippedPlugin } from './harness.mjs';

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

test('an admin installs a plugin from a file, sees each verdict in words, and rolls back', async () => {
  await inWorld('admin-plugins', {}, async (world, browser) => {
    cli(world.admin, ['admin', 'add-user', 'admin@acme.example', '--role', 'admin', '--contract']);
    const notWasm = world.dir('notes.txt');
    writeFileSync(notWasm, 'not a plugin');
    const badHolidays = world.dir('holidays.csv');
    writeFileSync(badHolidays, 'date,name\n2026-01-01,元日\n2026-13-01,nope\n');

    const admin = await (await browser.newContext()).newPage();
    await logInPage(admin, world, 'admin@acme.example');
    await admin.getByRole('link', { name: '管理' }).click();
    // The tenant starts with the standard plugin, in use.
    const plugins = admin.getByTestId('plugins');
    const standard = plugins.getByRole('row', { name: /standard@/ });
    await standard.getByText('使用中').waitFor({ timeout: 15_000 });

    const install = async (file, holidays) => {
      await admin.getByLabel('プラグインファイル（.wasm）').setInputFiles(file);
      await admin.getByLabel('休日の表（CSV、省略時は日本の祝日）').setInputFiles(holidays ?? []);
      await admin.getByRole('button', { name: 'プラグインをインストール' }).click();
    };

    // Not WebAssembly: refused by the server's install check, in words; nothing changes.
    await install(notWasm);
    await admin.getByRole('alert').filter({ hasText: 'WebAssembly のモジュールまたはコンポーネントではありません' }).waitFor();
    // A plugin that imports something: refused, naming the import.
    await install(shippedPlugin('hostile_wasi'));
    await admin.getByRole('alert').filter({ hasText: 'インポートしています' }).waitFor();
    // A holiday table that does not read: refused on this device, naming the line; nothing sent.
    await install(shippedPlugin('business_hours'), badHolidays);
    await admin.getByRole('alert').filter({ hasText: '3 行目' }).waitFor();
    await standard.getByText('使用中').waitFor();
    assert.equal(await plugins.getByRole('row').count(), 2, 'only the standard rule set is installed');

    // The business-hours plugin, with Japan's holidays: installed, and in use once it synced.
    await install(shippedPlugin('business_hours'));
    await admin.getByRole('status').filter({ hasText: /インストールしました: business-hours@/ }).waitFor({ timeout: 30_000 });
    const businessHours = plugins.getByRole('row', { name: /business-hours@/ });
    await businessHours.getByText('使用中').waitFor({ timeout: 15_000 });
    await screenshot(admin, '22-admin-plugins');
    assert.deepEqual(await seriousViolations(admin), []);
    // The CLI sees the same rule set in use.
    const listed = cli(world.admin, ['admin', 'plugin', 'list']);
    assert.match(listed.rulesets[0].plugin.id, /business-hours/);
    assert.equal(listed.rulesets[0].active, true);

    // Roll back to the standard rule set, from the page.
    await standard.getByRole('button', { name: 'このバージョンに戻す' }).click();
    await admin.getByRole('status').filter({ hasText: 'ルールセットを元に戻しました' }).waitFor({ timeout: 30_000 });
    await standard.getByText('使用中').waitFor({ timeout: 15_000 });
    await businessHours.getByRole('button', { name: 'このバージョンに戻す' }).waitFor();
    const after = cli(world.admin, ['admin', 'plugin', 'list']);
    assert.match(after.rulesets.find((r) => r.active).plugin.id, /standard/);
    assert.equal(after.installs.length, 3, 'the standard install, the upgrade and the rollback');
  });
});

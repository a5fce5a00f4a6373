// Who may see what: the calling contract's exact message, and the assignee
// restriction (担当者閲覧制限) on the page.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cli, CONTRACT_REQUIRED_JA, inWorld, logInPage, screenshot, seriousViolations } from './harness.mjs';

test('a user without the calling contract sees exactly the manual message', async () => {
  await inWorld('access-5', {}, async (world, browser) => {
    cli(world.admin, ['admin', 'add-user', 'nocontract@acme.example', '--role', 'user']);
    const page = await browser.newPage();
    await logInPage(page, world, 'nocontract@acme.example');
    const alert = page.getByRole('alert');
    await alert.waitFor({ timeout: 15_000 });
    assert.equal((await alert.textContent())?.trim(), CONTRACT_REQUIRED_JA);
    await screenshot(page, '11-contract-required');
    assert.deepEqual(await seriousViolations(page), []);
  });
});

test('under the assignee restriction a member sees only their customers', async () => {
  await inWorld('access-6', {}, async (world, browser) => {
    cli(world.admin, ['desk', 'create', '--id', 'cus-2', '--company', '有限会社みどり商店', '--contact', '鈴木', '--number', '代表:06-1234-5678']);
    cli(world.admin, ['admin', 'visibility', 'on']);
    const page = await browser.newPage();
    await logInPage(page, world, 'rep@acme.example');
    await page.getByRole('link', { name: '株式会社さくら物産' }).waitFor({ timeout: 15_000 });
    await page.getByTestId('connection').filter({ hasText: 'オンライン' }).waitFor();
    assert.equal(await page.getByRole('link', { name: '有限会社みどり商店' }).count(), 0);
    assert.equal(await page.locator('tbody tr').count(), 1);
    // The owner, above the restriction, sees both.
    const owner = await browser.newPage();
    await logInPage(owner, world, 'owner@acme.example');
    await owner.getByRole('link', { name: '有限会社みどり商店' }).waitFor({ timeout: 15_000 });
    assert.equal(await owner.locator('tbody tr').count(), 2);
  });
});

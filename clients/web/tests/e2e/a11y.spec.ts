// Accessibility: axe-core (WCAG 2.0/2.1 A and AA) finds nothing on any screen at 375, 768 and
// 1440 px; screenshots of each are saved (see SHOTS); nothing scrolls sideways at
// 320 px. Plus a keyboard-only run through the main flow.

import AxeBuilder from '@axe-core/playwright';
import { expect, test, type Browser, type Page } from '@playwright/test';
import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { launchChromium, makePki, startServer, uniqueName, type Pki, type Server } from './harness';
import {
  acceptRequest,
  openApp,
  PASSWORD,
  register,
  sendText,
  startDirect,
  type User,
} from './app';

// The committed screenshots are refreshed only on request (TERN_UPDATE_SCREENSHOTS=1): every
// run has other usernames, so writing them each time would leave the tree changed.
const SHOTS =
  process.env.TERN_UPDATE_SCREENSHOTS === '1'
    ? resolve(import.meta.dirname, '../screenshots')
    : resolve(import.meta.dirname, '../../test-results/screenshots');
const WIDTHS = [375, 768, 1440];

let pki: Pki;
let server: Server;
let browser: Browser;

test.beforeAll(async () => {
  mkdirSync(SHOTS, { recursive: true });
  pki = makePki();
  server = await startServer({ pki });
  browser = await launchChromium(pki);
});

test.afterAll(async () => {
  await browser?.close();
  await server?.stop();
});

async function audit(page: Page, screen: string): Promise<void> {
  for (const width of WIDTHS) {
    await page.setViewportSize({ width, height: width < 700 ? 740 : 900 });
    await page.waitForTimeout(150);
    const result = await new AxeBuilder({ page })
      .withTags(['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'])
      .analyze();
    const summary = result.violations.map(
      (v) =>
        `${v.id} (${v.impact}): ${v.help} — ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`,
    );
    expect(summary, `${screen} at ${width}px`).toEqual([]);
    await page.screenshot({ path: join(SHOTS, `${screen}-${width}.png`), fullPage: false });
  }
  await page.setViewportSize({ width: 320, height: 640 });
  await page.waitForTimeout(150);
  const overflow = await page.evaluate(
    () => document.documentElement.scrollWidth - document.documentElement.clientWidth,
  );
  expect(overflow, `${screen} scrolls sideways at 320px`).toBeLessThanOrEqual(0);
  await page.setViewportSize({ width: 1280, height: 800 });
}

test('axe finds no WCAG 2.1 A/AA violation on any screen at 375, 768 and 1440 px', async () => {
  const { context, page } = await openApp(browser, server);
  await audit(page, 'register');
  await page.getByRole('button', { name: 'Log in' }).first().click();
  await audit(page, 'login');
  await context.close();

  const alice = await register(browser, server, uniqueName('alice'));
  const bob = await register(browser, server, uniqueName('bob'));
  await audit(alice.page, 'chats-empty');
  await alice.page.getByRole('button', { name: 'New group' }).click();
  await audit(alice.page, 'new-group');
  await alice.page.getByRole('button', { name: 'Cancel' }).click();
  await startDirect(alice, bob.name);
  await sendText(alice, 'Hello! 👋 A first message to check contrast and layout.');
  await sendText(
    alice,
    'A second one, a little longer, so that the timeline wraps a line on a phone screen.',
  );
  await expect(alice.page.getByTestId('delivery').last()).toHaveText(/· (Sent|Delivered)/);
  await audit(alice.page, 'conversation');
  await audit(bob.page, 'invitation');
  await acceptRequest(bob);
  await sendText(bob, 'Hi! Reply from the other side.');
  await expect(alice.page.getByTestId('message').filter({ hasText: 'Reply from' })).toHaveCount(1);
  await audit(alice.page, 'conversation-reply');
  // The search box with its results open (an ARIA combobox and its listbox). Retyped until
  // the local index has caught up with the messages above.
  const search = alice.page.getByRole('combobox', { name: 'Search messages' });
  const results = alice.page.getByRole('listbox', { name: 'Search results' }).getByRole('option');
  await expect(async () => {
    await search.fill('');
    await search.fill('contrast');
    await expect(results).toHaveCount(1, { timeout: 2_000 });
  }).toPass({ timeout: 30_000 });
  await audit(alice.page, 'search-results');
  await search.fill('');
  await alice.page.getByRole('button', { name: 'Verify', exact: true }).click();
  await expect(alice.page.getByTestId('safety-number')).toBeVisible();
  await audit(alice.page, 'verify');
  await alice.page.getByRole('button', { name: 'Verify', exact: true }).click();
  await alice.page.getByRole('button', { name: 'Recovery', exact: true }).click();
  await audit(alice.page, 'recovery');
  await alice.page.getByRole('button', { name: 'Close' }).click();
  await alice.page.getByRole('button', { name: 'Devices', exact: true }).click();
  await expect(alice.page.getByTestId('device')).toHaveCount(1);
  await audit(alice.page, 'devices');
  await alice.page.getByRole('button', { name: 'Close' }).click();
  // A group as its owner: the member list.
  await alice.page.getByRole('button', { name: 'New group' }).click();
  const form = alice.page.getByRole('form', { name: 'New group' });
  await form.getByLabel('Name', { exact: true }).fill(uniqueName('Team '));
  await form.getByLabel('Invite (usernames)').fill(bob.name);
  await form.getByRole('button', { name: 'Create group' }).click();
  await alice.page.getByRole('button', { name: 'Members', exact: true }).click();
  await audit(alice.page, 'group-members');
  await alice.context.close();
  await bob.context.close();
});

test('keyboard only: register, start a chat and send a message without the mouse', async () => {
  const peer: User = await register(browser, server, uniqueName('kbpeer'));
  const { context, page } = await openApp(browser, server);
  const name = uniqueName('keys');
  // Tab to the username field (after the two account tabs), type, Tab to the password, Enter.
  for (let i = 0; i < 10; i++) {
    if (await page.getByLabel('Username').evaluate((el) => el === document.activeElement)) break;
    await page.keyboard.press('Tab');
  }
  await expect(page.getByLabel('Username')).toBeFocused();
  await page.keyboard.type(name);
  await page.keyboard.press('Tab');
  await page.keyboard.type(PASSWORD);
  await page.keyboard.press('Enter');
  await expect(page.getByTestId('connection')).toHaveAttribute('data-status', 'connected', {
    timeout: 30_000,
  });
  // The "New chat" field comes first in the navigation.
  for (let i = 0; i < 10; i++) {
    if (
      await page
        .getByLabel('New chat', { exact: true })
        .evaluate((el) => el === document.activeElement)
    )
      break;
    await page.keyboard.press('Tab');
  }
  await expect(page.getByLabel('New chat', { exact: true })).toBeFocused();
  await page.keyboard.type(peer.name);
  await page.keyboard.press('Enter');
  await expect(page.getByRole('heading', { level: 1, name: peer.name })).toBeVisible();
  await expect(page.getByLabel('Message', { exact: true })).toBeFocused();
  await page.keyboard.type('sent with the keyboard only');
  await page.keyboard.press('Enter');
  await expect(page.getByTestId('delivery').last()).toHaveText(/· (Sent|Delivered)/);
  await context.close();
  await peer.context.close();
});

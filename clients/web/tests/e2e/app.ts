// What a person does in the app, as Playwright steps (shared by the specs).

import { expect, type Browser, type BrowserContext, type Page } from '@playwright/test';
import { type Server } from './harness';

export const PASSWORD = 'correct horse battery';

export interface User {
  name: string;
  context: BrowserContext;
  page: Page;
}

export interface OpenOptions {
  /** Delete WebTransport from the page before any script runs (an older browser). */
  noWebTransport?: boolean;
  viewport?: { width: number; height: number };
}

export async function openApp(
  browser: Browser,
  server: Server,
  opts: OpenOptions = {},
): Promise<{ context: BrowserContext; page: Page }> {
  const context = await browser.newContext({
    viewport: opts.viewport ?? { width: 1280, height: 800 },
  });
  if (opts.noWebTransport) {
    await context.addInitScript(() => {
      delete (globalThis as { WebTransport?: unknown }).WebTransport;
    });
  }
  const page = await context.newPage();
  await page.goto(server.origin + '/');
  return { context, page };
}

export async function register(
  browser: Browser,
  server: Server,
  name: string,
  opts: OpenOptions = {},
): Promise<User> {
  const { context, page } = await openApp(browser, server, opts);
  await page.getByLabel('Username').fill(name);
  await page.getByLabel('Password').fill(PASSWORD);
  await page.getByRole('button', { name: 'Create account' }).last().click();
  await expect(page.getByTestId('connection')).toHaveAttribute('data-status', 'connected', {
    timeout: 30_000,
  });
  return { name, context, page };
}

export async function transportOf(u: User): Promise<string | null> {
  return u.page.getByTestId('connection').getAttribute('data-transport');
}

export async function startDirect(u: User, peer: string): Promise<void> {
  await u.page.getByLabel('New chat', { exact: true }).fill(peer);
  await u.page.getByRole('button', { name: 'Start' }).click();
  await expect(u.page.getByRole('heading', { level: 1, name: peer })).toBeVisible();
}

export async function sendText(u: User, text: string): Promise<void> {
  const box = u.page.getByLabel('Message', { exact: true });
  await box.fill(text);
  await box.press('Enter');
}

export async function openConversation(u: User, title: string): Promise<void> {
  await u.page
    .getByRole('navigation', { name: 'Conversations' })
    .getByRole('button', { name: new RegExp(title) })
    .first()
    .click();
  await expect(u.page.getByRole('heading', { level: 1, name: title })).toBeVisible();
}

export function messages(u: User) {
  return u.page.getByTestId('timeline').getByTestId('message');
}

export async function expectMessage(u: User, text: string): Promise<void> {
  await expect(messages(u).filter({ hasText: text })).toHaveCount(1, { timeout: 30_000 });
}

/** Accepts the first pending message request or invitation under "Invitations". */
export async function acceptRequest(u: User): Promise<void> {
  await u.page
    .getByRole('region', { name: 'Invitations' })
    .getByRole('button', { name: /^Accept/ })
    .click();
}

// Two people in two browser contexts against the real server: a 1:1 chat over WebTransport by
// default and over WebSocket when WebTransport is missing; encrypted messages both ways,
// presence, typing and reactions live.

import { expect, test } from '@playwright/test';
import { uniqueName, useServerAndBrowser } from './harness';
import {
  PASSWORD,
  expectMessage,
  messages,
  openConversation,
  register,
  sendText,
  startDirect,
  transportOf,
  type User,
} from './app';

const env = useServerAndBrowser();

async function chatBothWays(alice: User, bob: User): Promise<void> {
  await startDirect(alice, bob.name);
  await sendText(alice, 'hello bob, this is encrypted');
  // Bob's device receives a message request's messages before he accepts (and acknowledges
  // them), so "sent" may already be "delivered".
  await expect(messages(alice).filter({ hasText: 'hello bob' }).getByTestId('delivery')).toHaveText(
    /· (Sent|Delivered)/,
  );

  // Bob sees Alice's message request, accepts it and reads the message.
  const invitations = bob.page
    .getByRole('region', { name: 'Invitations' })
    .or(bob.page.locator('.invitations'));
  await expect(invitations.getByText(`${alice.name} wants to chat with you`)).toBeVisible();
  await invitations.getByRole('button', { name: /^Accept/ }).click();
  await openConversation(bob, alice.name);
  await expectMessage(bob, 'hello bob, this is encrypted');
  // Bob's device acknowledged it: Alice's copy turns "delivered", live.
  const delivery = (u: User, text: string) =>
    messages(u).filter({ hasText: text }).getByTestId('delivery');
  await expect(delivery(alice, 'hello bob')).toHaveText('· Delivered');

  // And answers.
  await sendText(bob, 'hi alice, got it');
  await expectMessage(alice, 'hi alice, got it');
  await expect(delivery(bob, 'hi alice')).toHaveText('· Delivered');

  // Presence: each sees the other online once the request is accepted.
  await expect(alice.page.getByTestId('conversation-sub')).toHaveText('online');
  await expect(bob.page.getByTestId('conversation-sub')).toHaveText('online');

  // Typing, live.
  await bob.page
    .getByLabel('Message', { exact: true })
    .pressSequentially('typing now', { delay: 20 });
  await expect(alice.page.getByTestId('typing')).toHaveText(`${bob.name} is typing…`);
  await bob.page.getByLabel('Message', { exact: true }).fill('');

  // A reaction, live.
  const theirs = messages(alice).filter({ hasText: 'hi alice, got it' });
  await theirs.getByRole('button', { name: /^React/ }).click();
  await theirs
    .getByRole('group', { name: 'Pick a reaction' })
    .getByRole('button', { name: '👍' })
    .click();
  await expect(
    messages(bob).filter({ hasText: 'hi alice, got it' }).getByTestId('reaction'),
  ).toHaveText(/👍 1/);

  // After a reload the state comes from the marks the server keeps, not from memory.
  await alice.page.reload();
  await openConversation(alice, bob.name);
  await expect(delivery(alice, 'hello bob')).toHaveText('· Delivered');
}

test('1:1 over WebTransport: message request, encrypted messages both ways, presence, typing, reactions', async () => {
  const alice = await register(env.browser, env.server, uniqueName('alice'));
  const bob = await register(env.browser, env.server, uniqueName('bob'));
  expect(await transportOf(alice)).toBe('webtransport');
  expect(await transportOf(bob)).toBe('webtransport');
  await chatBothWays(alice, bob);
  await alice.context.close();
  await bob.context.close();
});

test('1:1 over WebSocket when the browser has no WebTransport', async () => {
  const alice = await register(env.browser, env.server, uniqueName('alice'), {
    noWebTransport: true,
  });
  const bob = await register(env.browser, env.server, uniqueName('bob'), { noWebTransport: true });
  expect(await transportOf(alice)).toBe('websocket');
  expect(await transportOf(bob)).toBe('websocket');
  await chatBothWays(alice, bob);
  await alice.context.close();
  await bob.context.close();
});

test('WebTransport refused at first: WebSocket at once, then WebTransport again once it works', async () => {
  const context = await env.browser.newContext();
  await context.addInitScript(() => {
    const g = globalThis as unknown as Record<string, unknown>;
    const Real = g.WebTransport as new (url: string, o?: unknown) => unknown;
    g.__allowWT = false;
    g.__ternWtRetryMs = 1_000;
    g.WebTransport = function (url: string, o?: unknown) {
      if (!g.__allowWT) throw new TypeError('WebTransport blocked by the test');
      return new Real(url, o);
    };
  });
  const page = await context.newPage();
  await page.goto(env.server.origin + '/');
  const name = uniqueName('wtback');
  await page.getByLabel('Username').fill(name);
  await page.getByLabel('Password').fill(PASSWORD);
  await page.getByRole('button', { name: 'Create account' }).last().click();
  const badge = page.getByTestId('connection');
  await expect(badge).toHaveAttribute('data-status', 'connected', { timeout: 30_000 });
  await expect(badge).toHaveAttribute('data-transport', 'websocket');
  await page.evaluate(() => ((globalThis as unknown as Record<string, unknown>).__allowWT = true));
  await expect(badge).toHaveAttribute('data-transport', 'webtransport', { timeout: 20_000 });
  await expect(badge).toHaveAttribute('data-status', 'connected');
  await context.close();
});

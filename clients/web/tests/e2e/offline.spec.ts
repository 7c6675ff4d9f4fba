// Offline compose: the server is killed (every transport really cut, not only setOffline), the
// user writes three messages, reloads the page (the service worker serves the app, the outbox
// comes back from IndexedDB), the server comes back: each message arrives once, in order.

import { expect, test } from '@playwright/test';
import { uniqueName, useServerAndBrowser } from './harness';
import {
  acceptRequest,
  expectMessage,
  messages,
  openConversation,
  register,
  sendText,
  startDirect,
} from './app';

const env = useServerAndBrowser();

test('offline compose survives a reload and is sent once, in order, when the server is back', async () => {
  const alice = await register(env.browser, env.server, uniqueName('alice'));
  const bob = await register(env.browser, env.server, uniqueName('bob'));
  await startDirect(alice, bob.name);
  await sendText(alice, 'before the outage');
  await acceptRequest(bob);
  await openConversation(bob, alice.name);
  await expectMessage(bob, 'before the outage');
  // The service worker has the app shell before the outage.
  await expect
    .poll(
      () =>
        alice.page.evaluate(
          () =>
            navigator.serviceWorker.controller !== null ||
            navigator.serviceWorker.getRegistration().then((r) => r?.active?.state === 'activated'),
        ),
      {
        timeout: 15_000,
        message:
          'the service worker installed (its script needs a CSP that lets it fetch the shell)',
      },
    )
    .toBe(true);

  await env.server.kill();
  await expect(alice.page.getByTestId('connection')).not.toHaveAttribute(
    'data-status',
    'connected',
  );
  const offline = ['offline one', 'offline two', 'offline three'];
  for (const t of offline) await sendText(alice, t);
  for (const t of offline) {
    await expect(messages(alice).filter({ hasText: t }).getByTestId('delivery')).toHaveText(
      '· Queued',
    );
  }
  await expect(alice.page.getByTestId('connection')).toContainText('3 of 500 waiting to send');

  await alice.page.reload();
  await openConversation(alice, bob.name);
  for (const t of offline) await expect(messages(alice).filter({ hasText: t })).toHaveCount(1);

  await env.server.restart();
  await expect(alice.page.getByTestId('connection')).toHaveAttribute('data-status', 'connected', {
    timeout: 45_000,
  });
  for (const t of offline) {
    // Bob is online, so "sent" may already be "delivered".
    await expect(messages(alice).filter({ hasText: t }).getByTestId('delivery')).toHaveText(
      /· (Sent|Delivered)/,
      { timeout: 30_000 },
    );
  }
  await expect(bob.page.getByTestId('connection')).toHaveAttribute('data-status', 'connected', {
    timeout: 45_000,
  });
  for (const t of offline) await expectMessage(bob, t);
  for (const t of offline) {
    await expect(messages(alice).filter({ hasText: t }).getByTestId('delivery')).toHaveText(
      '· Delivered',
    );
  }
  const texts = await messages(bob).locator('.text').allTextContents();
  expect(texts).toEqual(['before the outage', ...offline]);
  await alice.context.close();
  await bob.context.close();
});

// Offline compose: the server is killed (every transport really cut, not only setOffline), the
// user writes three messages, reloads the page (the service worker serves the app, the outbox
// comes back from IndexedDB), the server comes back: each message arrives once, in order.

import { expect, test, type Browser } from '@playwright/test';
import {
  launchChromium,
  makePki,
  startServer,
  supportsWebDir,
  uniqueName,
  type Pki,
  type Server,
} from './harness';
import { expectMessage, messages, openConversation, register, sendText, startDirect } from './app';

let pki: Pki;
let server: Server;
let browser: Browser;

test.beforeAll(async () => {
  pki = makePki();
  server = await startServer({ pki });
  browser = await launchChromium(pki);
});

test.afterAll(async () => {
  await browser?.close();
  await server?.stop();
});

test('offline compose survives a reload and is sent once, in order, when the server is back', async () => {
  // The service worker's script is fetched by the browser itself, past Playwright's routes:
  // the app must be served by tern.
  test.skip(!supportsWebDir(), 'needs a tern that serves the app (--web-dir)');
  const alice = await register(browser, server, uniqueName('alice'));
  const bob = await register(browser, server, uniqueName('bob'));
  await startDirect(alice, bob.name);
  await sendText(alice, 'before the outage');
  await bob.page
    .getByRole('region', { name: 'Invitations' })
    .getByRole('button', { name: /^Accept/ })
    .click();
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

  await server.kill();
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

  await server.restart();
  await expect(alice.page.getByTestId('connection')).toHaveAttribute('data-status', 'connected', {
    timeout: 45_000,
  });
  for (const t of offline) {
    await expect(messages(alice).filter({ hasText: t }).getByTestId('delivery')).toHaveText(
      '· Sent',
      { timeout: 30_000 },
    );
  }
  await expect(bob.page.getByTestId('connection')).toHaveAttribute('data-status', 'connected', {
    timeout: 45_000,
  });
  for (const t of offline) await expectMessage(bob, t);
  const texts = await messages(bob).locator('.text').allTextContents();
  expect(texts).toEqual(['before the outage', ...offline]);
  await alice.context.close();
  await bob.context.close();
});

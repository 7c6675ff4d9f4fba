// Several tabs of one account: one leader (Web Locks) connects and sends; the other waits,
// read-only, and takes over when the leader closes — every message is sent once.

import { expect, test } from '@playwright/test';
import { uniqueName, useServerAndBrowser } from './harness';
import {
  acceptRequest,
  expectMessage,
  messages,
  openApp,
  openConversation,
  PASSWORD,
  register,
  sendText,
  startDirect,
} from './app';

const env = useServerAndBrowser();

test('two tabs of one account: one sends, the other takes over when it closes', async () => {
  const alice = await register(env.browser, env.server, uniqueName('alice'));
  const bob = await register(env.browser, env.server, uniqueName('bob'));
  await startDirect(alice, bob.name);
  await sendText(alice, 'from the first tab');
  await acceptRequest(bob);
  await openConversation(bob, alice.name);
  await expectMessage(bob, 'from the first tab');

  const second = await alice.context.newPage();
  await second.goto(env.server.origin + '/');
  await expect(second.getByTestId('connection')).toHaveAttribute('data-status', 'other-tab');
  await expect(second.getByTestId('connection')).toContainText('Open in another tab');

  await alice.page.close();
  await expect(second.getByTestId('connection')).toHaveAttribute('data-status', 'connected', {
    timeout: 30_000,
  });
  const tab2 = { ...alice, page: second };
  await openConversation(tab2, bob.name);
  await sendText(tab2, 'from the second tab');
  await expectMessage(bob, 'from the second tab');
  await expect(messages(bob).filter({ hasText: 'from the first tab' })).toHaveCount(1);
  await alice.context.close();
  await bob.context.close();
});

test('devices: a second browser is a second device; removing it signs it out', async () => {
  const alice = await register(env.browser, env.server, uniqueName('alice'));
  const other = await openApp(env.browser, env.server);
  await other.page.getByRole('button', { name: 'Log in' }).first().click();
  await other.page.getByLabel('Username').fill(alice.name);
  await other.page.getByLabel('Password').fill(PASSWORD);
  await other.page.getByRole('button', { name: 'Log in' }).last().click();
  await expect(other.page.getByTestId('connection')).toHaveAttribute('data-status', 'connected');

  await alice.page.getByRole('button', { name: 'Devices', exact: true }).click();
  const devices = alice.page.getByRole('region', { name: 'Your devices' }).getByTestId('device');
  await expect(devices).toHaveCount(2);
  await expect(devices.filter({ hasText: 'This browser' })).toHaveCount(1);
  await devices
    .filter({ hasText: 'Another device' })
    .getByRole('button', { name: /Remove/ })
    .click();
  await expect(devices).toHaveCount(1);
  // The removed device's token is revoked: it is back at the sign-in screen, its data gone.
  await expect(other.page.getByRole('heading', { name: 'Create your account' })).toBeVisible({
    timeout: 30_000,
  });
  await alice.context.close();
  await other.context.close();
});

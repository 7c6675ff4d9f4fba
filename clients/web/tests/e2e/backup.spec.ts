// Recovery passphrase: set up on one device; after a logout this browser is a new device that
// cannot read the history until the passphrase restores the keys (a wrong one is refused).

import { expect, test } from '@playwright/test';
import { uniqueName, useServerAndBrowser } from './harness';
import {
  acceptRequest,
  expectMessage,
  messages,
  openConversation,
  PASSWORD,
  register,
  sendText,
  startDirect,
} from './app';

const env = useServerAndBrowser();

test('recovery passphrase: set up, log out, log in as a new device, restore the history', async () => {
  const alice = await register(env.browser, env.server, uniqueName('alice'));
  const bob = await register(env.browser, env.server, uniqueName('bob'));
  await startDirect(alice, bob.name);
  await sendText(alice, 'before the backup');
  await acceptRequest(bob);
  await openConversation(bob, alice.name);
  await sendText(bob, 'reply from bob');
  await expectMessage(alice, 'reply from bob');

  const passphrase = 'orange kettle midnight';
  await alice.page.getByRole('button', { name: 'Recovery', exact: true }).click();
  await alice.page.getByLabel('Passphrase', { exact: true }).fill(passphrase);
  await alice.page.getByRole('button', { name: 'Set up recovery' }).click();
  await expect(alice.page.getByText(/Recovery is set up \(\d+ keys?/)).toBeVisible({
    timeout: 30_000,
  });

  await alice.page.getByRole('button', { name: 'Log out' }).click();
  await alice.page.getByRole('button', { name: 'Log in' }).first().click();
  await alice.page.getByLabel('Username').fill(alice.name);
  await alice.page.getByLabel('Password').fill(PASSWORD);
  await alice.page.getByRole('button', { name: 'Log in' }).last().click();
  await expect(alice.page.getByTestId('connection')).toHaveAttribute('data-status', 'connected', {
    timeout: 30_000,
  });
  await openConversation(alice, bob.name);
  // A new device: the history is there, its keys are not.
  await expect(
    messages(alice).filter({ hasText: 'Waiting for this message’s key' }).first(),
  ).toBeVisible();

  await alice.page.getByRole('button', { name: 'Recovery', exact: true }).click();
  await alice.page.getByLabel('Passphrase', { exact: true }).fill('not the passphrase');
  await alice.page.getByRole('button', { name: 'Restore from backup' }).click();
  await expect(alice.page.getByRole('alert')).toHaveText(
    'That passphrase does not open the backup.',
    { timeout: 30_000 },
  );
  await alice.page.getByLabel('Passphrase', { exact: true }).fill(passphrase);
  await alice.page.getByRole('button', { name: 'Restore from backup' }).click();
  await expect(alice.page.getByText(/Restored \d+ keys?/)).toBeVisible({ timeout: 30_000 });
  await expectMessage(alice, 'reply from bob');
  await expectMessage(alice, 'before the backup');
  await alice.context.close();
  await bob.context.close();
});

// Groups: the owner creates one with a name, a description and invitees; one accepts, one
// declines (the owner is told); messages flow both ways; the owner invites later.

import { expect, test } from '@playwright/test';
import { uniqueName, useServerAndBrowser } from './harness';
import { expectMessage, openConversation, register, sendText } from './app';

const env = useServerAndBrowser();

test('group: create with invitations, accept and decline, messages both ways', async () => {
  const owner = await register(env.browser, env.server, uniqueName('olga'));
  const bob = await register(env.browser, env.server, uniqueName('bob'));
  const carol = await register(env.browser, env.server, uniqueName('carol'));
  const group = uniqueName('Team ');

  await owner.page.getByRole('button', { name: 'New group' }).click();
  const form = owner.page.getByRole('form', { name: 'New group' });
  await form.getByLabel('Name', { exact: true }).fill(group);
  await form.getByLabel('Description').fill('Planning the launch');
  await form.getByLabel('Invite (usernames)').fill(`${bob.name}, ${carol.name}`);
  await form.getByRole('button', { name: 'Create group' }).click();
  await expect(owner.page.getByRole('heading', { level: 1, name: group })).toBeVisible();
  await expect(owner.page.getByTestId('conversation-sub')).toHaveText(
    '1 member · Planning the launch',
  );

  const bobInvites = bob.page.getByRole('region', { name: 'Invitations' });
  await expect(bobInvites.getByText(`${owner.name} invites you to ${group}`)).toBeVisible();
  await bobInvites.getByRole('button', { name: /^Accept/ }).click();
  await openConversation(bob, group);

  const carolInvites = carol.page.getByRole('region', { name: 'Invitations' });
  await expect(carolInvites.getByText(`${owner.name} invites you to ${group}`)).toBeVisible();
  await carolInvites.getByRole('button', { name: /^Decline/ }).click();
  await expect(carolInvites).toHaveCount(0);
  // The owner hears of the decline.
  await expect(owner.page.getByRole('status', { name: 'Notifications' })).toContainText(
    `${carol.name} declined the invitation to ${group}`,
  );

  await sendText(owner, 'welcome to the group');
  await expectMessage(bob, 'welcome to the group');
  // Bob is the only other member (Carol declined): his device has it, so it is delivered.
  await expect(
    owner.page.getByTestId('message').filter({ hasText: 'welcome' }).getByTestId('delivery'),
  ).toHaveText('· Delivered');
  await sendText(bob, 'thanks, happy to be here');
  await expectMessage(owner, 'thanks, happy to be here');
  // The sender's name is shown in groups.
  await expect(
    owner.page.getByTestId('message').filter({ hasText: 'thanks' }).locator('.sender'),
  ).toHaveText(bob.name);

  // The owner removes Bob: his copy of the group goes away and he gets nothing sent after.
  await owner.page.getByRole('button', { name: 'Members', exact: true }).click();
  await owner.page
    .getByRole('region', { name: 'Members' })
    .getByRole('button', { name: `Remove ${bob.name}` })
    .click();
  await expect(owner.page.getByTestId('conversation-sub')).toHaveText(
    '1 member · Planning the launch',
  );
  await sendText(owner, 'after bob left');
  await expect(
    owner.page.getByTestId('message').filter({ hasText: 'after bob left' }).getByTestId('delivery'),
  ).toHaveText(/Sent/);
  await expect(
    bob.page
      .getByRole('navigation', { name: 'Conversations' })
      .getByRole('button', { name: new RegExp(group) }),
  ).toHaveCount(0);
  await expect(bob.page.getByTestId('message').filter({ hasText: 'after bob left' })).toHaveCount(
    0,
  );

  for (const u of [owner, bob, carol]) await u.context.close();
});

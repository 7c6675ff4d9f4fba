// A scripted first-time user: from the landing page to a first message delivered to a friend
// who already uses Tern. Prints the time and the number of steps (a step = one action a person
// takes: a click, or typing into one field, or pressing Enter).

import { expect, test } from '@playwright/test';
import { uniqueName, useServerAndBrowser } from './harness';
import { acceptRequest, openConversation, PASSWORD, register } from './app';

const env = useServerAndBrowser();

test('first-time user: landing page to a delivered first message', async () => {
  const friend = await register(env.browser, env.server, uniqueName('friend'));
  const context = await env.browser.newContext({ viewport: { width: 390, height: 800 } });
  const page = await context.newPage();
  const name = uniqueName('newbie');
  const text = 'Hi! My first message on Tern.';
  let steps = 0;
  const started = Date.now();

  await page.goto(env.server.origin + '/');
  steps++; // open the link
  await page.getByLabel('Username').fill(name);
  steps++;
  await page.getByLabel('Password').fill(PASSWORD);
  steps++;
  await page.getByRole('button', { name: 'Create account' }).last().click();
  steps++;
  await page.getByLabel('New chat', { exact: true }).fill(friend.name);
  steps++;
  await page.getByRole('button', { name: 'Start' }).click();
  steps++;
  await page.getByLabel('Message', { exact: true }).fill(text);
  steps++;
  await page.getByLabel('Message', { exact: true }).press('Enter');
  steps++;
  // The friend's device may have it already (a request's messages reach the invitee).
  await expect(page.getByTestId('delivery').last()).toHaveText(/· (Sent|Delivered)/);
  const stored = Date.now() - started;

  // Delivered: the friend accepts the request and reads it.
  await acceptRequest(friend);
  await openConversation(friend, name);
  await expect(friend.page.getByTestId('message').filter({ hasText: text })).toHaveCount(1);
  const delivered = Date.now() - started;
  // And the sender's page says so.
  await expect(page.getByTestId('delivery').last()).toHaveText('· Delivered');
  console.log(
    `FIRST-TIME USER: ${steps} steps; message stored by the server after ${stored} ms, ` +
      `read by the friend after ${delivered} ms (scripted; a person adds typing and reading time)`,
  );
  expect(delivered).toBeLessThan(60_000);
  await context.close();
  await friend.context.close();
});

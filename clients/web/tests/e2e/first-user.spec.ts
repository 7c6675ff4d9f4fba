// A scripted first-time user: from the landing page to a first message delivered to a friend
// who already uses Tern. Prints the time and the number of steps (a step = one action a person
// takes: a click, or typing into one field, or pressing Enter).

import { expect, test, type Browser } from '@playwright/test';
import { launchChromium, makePki, startServer, uniqueName, type Pki, type Server } from './harness';
import { openConversation, PASSWORD, register } from './app';

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

test('first-time user: landing page to a delivered first message', async () => {
  const friend = await register(browser, server, uniqueName('friend'));
  const context = await browser.newContext({ viewport: { width: 390, height: 800 } });
  const { serveDistIfNeeded } = await import('./harness');
  await serveDistIfNeeded(context, server);
  const page = await context.newPage();
  const name = uniqueName('newbie');
  const text = 'Hi! My first message on Tern.';
  let steps = 0;
  const started = Date.now();

  await page.goto(server.origin + '/');
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
  await expect(page.getByTestId('delivery').last()).toHaveText(/Sent/);
  const stored = Date.now() - started;

  // Delivered: the friend accepts the request and reads it.
  await friend.page
    .getByRole('region', { name: 'Invitations' })
    .getByRole('button', { name: /^Accept/ })
    .click();
  await openConversation(friend, name);
  await expect(friend.page.getByTestId('message').filter({ hasText: text })).toHaveCount(1);
  const delivered = Date.now() - started;
  console.log(
    `FIRST-TIME USER: ${steps} steps; message stored by the server after ${stored} ms, ` +
      `read by the friend after ${delivered} ms (scripted; a person adds typing and reading time)`,
  );
  expect(delivered).toBeLessThan(60_000);
  await context.close();
  await friend.context.close();
});

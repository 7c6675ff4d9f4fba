// The zero-configuration path: `tern serve` with its own self-signed certificate. The person
// trusts that certificate in the browser (here: added to the profile's NSS db as a trusted
// server certificate, never --ignore-certificate-errors); WebTransport pins the hash from
// /api/v1/transport. Two people chat over WebTransport.

import { expect, test, type Browser } from '@playwright/test';
import {
  findFile,
  launchChromium,
  startServer,
  trustServerCert,
  uniqueName,
  type Server,
} from './harness';
import {
  acceptRequest,
  expectMessage,
  openConversation,
  register,
  sendText,
  startDirect,
  transportOf,
} from './app';

let server: Server;
let browser: Browser;

test.beforeAll(async () => {
  server = await startServer();
  const cert = findFile(server.dataDir, 'self-signed-cert.pem');
  if (!cert) throw new Error(`no self-signed certificate under ${server.dataDir}`);
  browser = await launchChromium(trustServerCert(cert));
});

test.afterAll(async () => {
  await browser?.close();
  await server?.stop();
});

test('self-signed server: the app loads, WebTransport pins the published hash, messages flow', async () => {
  const alice = await register(browser, server, uniqueName('alice'));
  const bob = await register(browser, server, uniqueName('bob'));
  expect(await transportOf(alice)).toBe('webtransport');
  expect(await transportOf(bob)).toBe('webtransport');
  await startDirect(alice, bob.name);
  await sendText(alice, 'over a self-signed certificate');
  await acceptRequest(bob);
  await openConversation(bob, alice.name);
  await expectMessage(bob, 'over a self-signed certificate');
  await sendText(bob, 'and back');
  await expectMessage(alice, 'and back');
  await alice.context.close();
  await bob.context.close();
});

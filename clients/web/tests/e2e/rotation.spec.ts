// Issue 12, Build 3: a certificate rotation is followed without a reload. The zero-config
// self-signed certificate rotates on a schedule scaled by `self_signed_validity_secs` (here a
// minute instead of 14 days: a switch every ~37 s). WebTransport pins the hashes the page reads
// from /api/v1/transport; Chromium refuses QUIC to a locally trusted certificate whose hash is
// not pinned, so a page that kept stale hashes falls back to WebSocket. The person trusts each
// certificate the server makes in the browser's NSS db (as they trusted the first one: the
// HTTPS API needs it, the pinned WebTransport does not), never --ignore-certificate-errors.
//
// 1. Two people chat over WebTransport; past a rotation the server restarts (every session
//    ends); both pages reconnect over WebTransport with the new hash, without a reload, and
//    messages flow both ways. Twice in a row.
// 2. A page that had to use WebSocket keeps probing for WebTransport; when WebTransport comes
//    back after a rotation, the probe must pin the new hash (re-fetch /api/v1/transport), not
//    the hashes it was given before the rotation.

import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { expect, test, type Browser, type Page } from '@playwright/test';
import {
  findFile,
  launchChromium,
  startServer,
  trustServerCert,
  uniqueName,
  type Pki,
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
  type User,
} from './app';

/** A minute: the first switch ~42 s after start, then every ~37 s (gateway/src/tls.rs
 * RotationSchedule: switch 3/14 of the validity before expiry, publish the next 1/14 earlier). */
const VALIDITY_SECS = 60;
/** Longest wait for one rotation (a period with slack). */
const ROTATION_WAIT_MS = 75_000;

let server: Server;
let browser: Browser;
let pki: Pki;
let trustLoop: ReturnType<typeof setInterval> | undefined;
const trusted = new Set<string>();

/** The person trusts every self-signed certificate the server made (current and next). */
function trustNewCertificates(): void {
  const cert = findFile(server.dataDir, 'self-signed-cert.pem');
  if (!cert) return;
  const dir = join(cert, '..');
  for (const name of readdirSync(dir)) {
    if (!/^self-signed.*cert\.pem$/.test(name)) continue;
    let pem: string;
    try {
      pem = readFileSync(join(dir, name), 'utf8');
    } catch {
      continue; // being replaced
    }
    if (!pem.includes('END CERTIFICATE') || trusted.has(pem)) continue;
    trusted.add(pem);
    execFileSync(
      'certutil',
      [
        '-A',
        '-d',
        `sql:${join(pki.home, '.pki', 'nssdb')}`,
        '-n',
        `tern self-signed ${trusted.size}`,
        '-t',
        'P,,',
        '-i',
        join(dir, name),
      ],
      { stdio: 'pipe' },
    );
  }
}

interface Published {
  /** SHA-256 of the certificate the TLS handshake presented. */
  served: string;
  current: string;
  next?: string;
}

/** What /api/v1/transport publishes, and which certificate the server presents. The test's own
 * client checks the certificate by hash (like WebTransport does) instead of a CA. */
function published(): Promise<Published> {
  return new Promise((resolve, reject) => {
    const req = request(
      `${server.origin}/api/v1/transport`,
      { rejectUnauthorized: false, agent: false, timeout: 10_000 },
      (res) => {
        const peer = (res.socket as TLSSocket).getPeerCertificate();
        const served = peer.fingerprint256.replace(/:/g, '').toLowerCase();
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => {
          try {
            const info = JSON.parse(body) as {
              certificate_hashes: { value: string; role: string }[];
            };
            const role = (r: string) => info.certificate_hashes.find((h) => h.role === r)?.value;
            resolve({ served, current: role('current') ?? '', next: role('next') });
          } catch (e) {
            reject(e instanceof Error ? e : new Error(String(e)));
          }
        });
      },
    );
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error('transport request timed out')));
    req.end();
  });
}

/** Waits until the published current hash is no longer `from` and the server presents that
 * certificate (one request can straddle the switch: its handshake before, its answer after). */
async function waitForRotation(from: string): Promise<Published> {
  let now: Published = await published();
  await expect
    .poll(
      async () => {
        now = await published();
        return now.current !== from && now.served === now.current;
      },
      {
        timeout: ROTATION_WAIT_MS,
        intervals: [500],
        message: 'the certificate rotated, and the server presents the one it publishes',
      },
    )
    .toBe(true);
  return now;
}

/** Counts the page's fetches of /api/v1/transport. */
function countTransportFetches(page: Page): () => number {
  let n = 0;
  page.on('request', (r) => {
    if (new URL(r.url()).pathname === '/api/v1/transport') n++;
  });
  return () => n;
}

async function expectConnectedOver(u: User, transport: string, timeout = 45_000): Promise<void> {
  const badge = u.page.getByTestId('connection');
  await expect(badge).toHaveAttribute('data-status', 'connected', { timeout });
  await expect(badge).toHaveAttribute('data-transport', transport, { timeout });
}

/** Graceful restart: SIGTERM (sessions get GoingAway and a close), then the same server again. */
async function restartServer(): Promise<void> {
  const child = server.process;
  await new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
  await server.restart();
}

test.beforeAll(async () => {
  server = await startServer({ config: [`self_signed_validity_secs = ${VALIDITY_SECS}`] });
  const cert = findFile(server.dataDir, 'self-signed-cert.pem');
  if (!cert) throw new Error(`no self-signed certificate under ${server.dataDir}`);
  pki = trustServerCert(cert);
  trusted.add(readFileSync(cert, 'utf8'));
  trustNewCertificates();
  trustLoop = setInterval(trustNewCertificates, 250);
  browser = await launchChromium(pki);
});

test.afterAll(async () => {
  if (trustLoop) clearInterval(trustLoop);
  await browser?.close();
  await server?.stop();
});

test('past two rotations, both pages reconnect over WebTransport with the new hash, no reload', async () => {
  test.setTimeout(240_000);
  const alice = await register(browser, server, uniqueName('alice'));
  const bob = await register(browser, server, uniqueName('bob'));
  const aliceFetches = countTransportFetches(alice.page);
  const bobFetches = countTransportFetches(bob.page);
  expect(await transportOf(alice)).toBe('webtransport');
  expect(await transportOf(bob)).toBe('webtransport');
  await startDirect(alice, bob.name);
  await sendText(alice, 'before any rotation');
  await acceptRequest(bob);
  await openConversation(bob, alice.name);
  await expectMessage(bob, 'before any rotation');
  // A mark in each page's global scope: a reload would wipe it.
  const mark = (u: User) =>
    u.page.evaluate(() => ((globalThis as { __sameDocument?: boolean }).__sameDocument = true));
  const marked = (u: User) =>
    u.page.evaluate(() => (globalThis as { __sameDocument?: boolean }).__sameDocument === true);
  await mark(alice);
  await mark(bob);

  let state = await published();
  for (const round of [1, 2]) {
    const before = state.current;
    state = await waitForRotation(before);
    // The sessions opened before the switch still run on the old certificate; end them.
    const fetched = { alice: aliceFetches(), bob: bobFetches() };
    await restartServer();
    await expect(alice.page.getByTestId('connection')).toHaveAttribute('data-status', 'connected', {
      timeout: 45_000,
    });
    await expectConnectedOver(alice, 'webtransport');
    await expectConnectedOver(bob, 'webtransport');
    // Each reconnect read the hashes again (what lets it follow the next rotation too).
    expect(aliceFetches()).toBeGreaterThan(fetched.alice);
    expect(bobFetches()).toBeGreaterThan(fetched.bob);
    expect((await published()).current, 'still the rotated certificate').not.toBe(before);

    await sendText(alice, `after rotation ${round}, alice`);
    await expectMessage(bob, `after rotation ${round}, alice`);
    await sendText(bob, `after rotation ${round}, bob`);
    await expectMessage(alice, `after rotation ${round}, bob`);
    expect(await transportOf(alice)).toBe('webtransport');
    expect(await transportOf(bob)).toBe('webtransport');
  }
  expect([await marked(alice), await marked(bob)], 'no page was reloaded').toEqual([true, true]);
  await alice.context.close();
  await bob.context.close();
});

test('a page on WebSocket switches to WebTransport after a rotation, pinning the new hash', async () => {
  test.setTimeout(240_000);
  // WebTransport is refused until the test lets it through (as a network that blocked UDP and
  // stopped); the page probes for it every second.
  const blockWebTransport = () => {
    const g = globalThis as {
      WebTransport?: unknown;
      __ternWtRetryMs?: number;
      __wtBlocked?: boolean;
    };
    const Real = g.WebTransport as new (...a: unknown[]) => object;
    g.__wtBlocked = true;
    g.__ternWtRetryMs = 1_000;
    g.WebTransport = new Proxy(Real, {
      construct(target, args) {
        if (g.__wtBlocked) throw new TypeError('WebTransport blocked by the test');
        return Reflect.construct(target, args) as object;
      },
    });
  };
  const alice = await register(browser, server, uniqueName('alice'));
  const bob = await register(browser, server, uniqueName('bob'), {});
  await bob.context.addInitScript(blockWebTransport);
  await bob.page.reload();
  await expectConnectedOver(bob, 'websocket');
  const bobFetches = countTransportFetches(bob.page);
  await startDirect(alice, bob.name);
  await sendText(alice, 'to a page on WebSocket');
  await acceptRequest(bob);
  await openConversation(bob, alice.name);
  await expectMessage(bob, 'to a page on WebSocket');

  // The hashes bob's connection was given are now stale.
  const before = await published();
  await waitForRotation(before.current);
  if (before.next) await waitForRotation((await published()).current);
  const fetched = bobFetches();
  await bob.page.evaluate(() => ((globalThis as { __wtBlocked?: boolean }).__wtBlocked = false));
  await expectConnectedOver(bob, 'webtransport', 20_000);
  expect(bobFetches(), 'the probe read the current hashes').toBeGreaterThan(fetched);
  await sendText(bob, 'over WebTransport again');
  await expectMessage(alice, 'over WebTransport again');
  await sendText(alice, 'and back');
  await expectMessage(bob, 'and back');
  await alice.context.close();
  await bob.context.close();
});

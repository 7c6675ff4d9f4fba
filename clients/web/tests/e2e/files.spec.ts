// Attachments in the browser against the real server: a file encrypted in the page, uploaded
// with progress (the attach button and drag-and-drop), received by the other person, downloaded
// and checked against the sender's hash; an image previewed after decryption in the page; a
// cancelled upload leaves nothing on the server; a tampered stored object fails verification.

import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, test, type Page } from '@playwright/test';
import { uniqueName, useServerAndBrowser } from './harness';
import {
  acceptRequest,
  expectMessage,
  messages,
  openConversation,
  register,
  sendText,
  startDirect,
  type User,
} from './app';

const env = useServerAndBrowser();

/** A 2x2 PNG (red, green, blue, white), valid enough for Chromium to decode. */
const PNG = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAEklEQVR4nGP4z8DAAMIM/4EAAB/uBfsL2WiLAAAAAElFTkSuQmCC',
  'base64',
);

/** Every regular file under `dir` (recursively; empty when it does not exist). */
function filesUnder(dir: string): string[] {
  let out: string[] = [];
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return out;
  }
  for (const n of names) {
    const p = join(dir, n);
    const s = statSync(p);
    if (s.isDirectory()) out = out.concat(filesUnder(p));
    else if (s.isFile()) out.push(p);
  }
  return out;
}

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/** Chromium's network throttling for the page's HTTP requests (uploads included). */
async function throttleUploads(page: Page, bytesPerSecond: number): Promise<void> {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Network.enable');
  await cdp.send('Network.emulateNetworkConditions', {
    offline: false,
    latency: 0,
    downloadThroughput: -1,
    uploadThroughput: bytesPerSecond,
  });
}

async function chatting(): Promise<{ alice: User; bob: User }> {
  const alice = await register(env.browser, env.server, uniqueName('alice'));
  const bob = await register(env.browser, env.server, uniqueName('bob'));
  await startDirect(alice, bob.name);
  await sendText(alice, 'files coming');
  await acceptRequest(bob);
  await openConversation(bob, alice.name);
  await expectMessage(bob, 'files coming');
  return { alice, bob };
}

function attachment(u: User, name: string) {
  return messages(u).filter({ hasText: name }).getByTestId('attachment');
}

test('a file sent with the attach button arrives, downloads and matches the sender’s hash', async () => {
  const { alice, bob } = await chatting();
  const content = randomBytes(3 * 1024 * 1024 + 12_345);
  // Slow enough that the progress bar is seen moving, fast enough for the test.
  await throttleUploads(alice.page, 1024 * 1024);
  await alice.page.getByTestId('attach').setInputFiles({
    name: 'report.bin',
    mimeType: 'application/octet-stream',
    buffer: content,
  });
  const upload = alice.page.getByTestId('upload').filter({ hasText: 'report.bin' });
  await expect(upload.getByRole('progressbar', { name: 'Uploading report.bin' })).toBeVisible();
  // Done: the upload row goes, the message shows in both timelines.
  await expect(upload).toHaveCount(0, { timeout: 60_000 });
  await expect(attachment(alice, 'report.bin')).toBeVisible();
  await expect(attachment(bob, 'report.bin')).toContainText('report.bin (3.0 MB)', {
    timeout: 30_000,
  });

  const downloaded = bob.page.waitForEvent('download');
  await attachment(bob, 'report.bin')
    .getByRole('button', { name: /Download/ })
    .click();
  const d = await downloaded;
  expect(d.suggestedFilename()).toBe('report.bin');
  const path = await d.path();
  expect(sha256(readFileSync(path))).toBe(sha256(content));
  await expect(attachment(bob, 'report.bin').getByTestId('download-verified')).toBeVisible();

  // The server holds ciphertext only: no stored file contains a slice of the plaintext.
  const marker = content.subarray(1_000_000, 1_000_064);
  for (const f of filesUnder(join(env.server.dataDir, 'files'))) {
    expect(readFileSync(f).includes(marker), `plaintext found in ${f}`).toBe(false);
  }
});

test('an image dropped on the conversation is previewed for the recipient, decrypted in the page', async () => {
  const { alice, bob } = await chatting();
  // Drag-and-drop: a DataTransfer with the file, dropped on the conversation view.
  const transfer = await alice.page.evaluateHandle((b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const dt = new DataTransfer();
    dt.items.add(new File([bytes], 'dot.png', { type: 'image/png' }));
    return dt;
  }, PNG.toString('base64'));
  const view = alice.page.locator('.conversation-view');
  await view.dispatchEvent('dragover', { dataTransfer: transfer });
  await view.dispatchEvent('drop', { dataTransfer: transfer });
  const preview = attachment(bob, 'dot.png').getByTestId('preview');
  await expect(preview).toBeVisible({ timeout: 30_000 });
  // Decoded: the blob the page decrypted is the image (2x2), served from a blob: URL.
  await expect.poll(() => preview.evaluate((img: HTMLImageElement) => img.naturalWidth)).toBe(2);
  expect(await preview.getAttribute('src')).toMatch(/^blob:/);
  await expect(attachment(alice, 'dot.png').getByTestId('preview')).toBeVisible();
});

test('a cancelled upload leaves nothing on the server; a tampered object fails verification', async () => {
  const { alice, bob } = await chatting();
  const staging = join(env.server.dataDir, 'files');
  const before = new Set(filesUnder(staging));
  await throttleUploads(alice.page, 256 * 1024);
  await alice.page.getByTestId('attach').setInputFiles({
    name: 'big.bin',
    mimeType: 'application/octet-stream',
    buffer: randomBytes(8 * 1024 * 1024),
  });
  const upload = alice.page.getByTestId('upload').filter({ hasText: 'big.bin' });
  await expect(upload.getByRole('progressbar')).toBeVisible();
  await expect
    .poll(async () => Number(await upload.getByRole('progressbar').getAttribute('value')))
    .toBeGreaterThan(0);
  await upload.getByRole('button', { name: /Cancel/ }).click();
  await expect(upload).toHaveCount(0);
  await expect.poll(() => filesUnder(staging).filter((f) => !before.has(f))).toEqual([]);
  await expect(messages(bob).filter({ hasText: 'big.bin' })).toHaveCount(0);

  // A stored object whose bytes were changed is refused by the recipient's page.
  await throttleUploads(alice.page, -1);
  const content = randomBytes(200_000);
  await alice.page.getByTestId('attach').setInputFiles({
    name: 'contract.pdf',
    mimeType: 'application/pdf',
    buffer: content,
  });
  await expect(attachment(bob, 'contract.pdf')).toBeVisible({ timeout: 30_000 });
  const stored = filesUnder(staging).filter((f) => !before.has(f) && statSync(f).size > 200_000);
  expect(stored).toHaveLength(1);
  const bytes = readFileSync(stored[0]!);
  bytes[150_000] = (bytes[150_000] ?? 0) ^ 0x01;
  writeFileSync(stored[0]!, bytes);
  await attachment(bob, 'contract.pdf')
    .getByRole('button', { name: /Download/ })
    .click();
  await expect(attachment(bob, 'contract.pdf').getByTestId('download-failed')).toBeVisible();
  await expect(attachment(bob, 'contract.pdf').getByTestId('download-verified')).toHaveCount(0);
});

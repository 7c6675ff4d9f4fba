// Message search in the browser against the real server: messages are indexed in the search
// worker as they are decrypted (SQLite + FTS5 compiled to wasm, files in OPFS, encrypted at
// rest); results come as you type (accents folded, a CJK word, prefixes), with highlighted
// snippets, keyboard only; a result opens its conversation scrolled to the message, highlighted,
// with the messages around it loaded from the server's "around" history; the index survives a
// reload with the server down; its files hold none of the texts; logout deletes it.

import AxeBuilder from '@axe-core/playwright';
import { expect, test, type Page } from '@playwright/test';
import { uniqueName, useServerAndBrowser } from './harness';
import {
  acceptRequest,
  expectMessage,
  openConversation,
  register,
  sendText,
  startDirect,
} from './app';

const env = useServerAndBrowser();

/** Messages after the needle: more than one history page, so a reload shows not the needle. */
const AFTER = 60;
const MARKER = 'zq-plaintext-marker';

interface TernSearchWindow {
  tern: {
    search: { stats(): Promise<{ messages: number }>; state: string };
    stopSearch(): Promise<void>;
    startSearch(): void;
  };
}

function searchBox(page: Page) {
  return page.getByRole('combobox', { name: 'Search messages' });
}

function hits(page: Page) {
  return page.getByRole('listbox', { name: 'Search results' }).getByRole('option');
}

async function searchReady(page: Page): Promise<void> {
  await expect
    .poll(() => page.evaluate(() => (window as unknown as TernSearchWindow).tern.search.state))
    .toBe('ready');
}

/** How many messages the index holds (after the queued ones were written). */
async function indexed(page: Page): Promise<number> {
  return page.evaluate(async () => {
    const s = (window as unknown as TernSearchWindow).tern.search;
    return (await s.stats()).messages;
  });
}

/** Every OPFS file's bytes scanned for `needles` (latin1: any UTF-8 byte sequence matches). */
async function scanOpfs(page: Page, needles: string[]) {
  return page.evaluate(async (needles) => {
    const out = { files: 0, bytes: 0, found: [] as string[], dirs: [] as string[] };
    const enc = new TextEncoder();
    const walk = async (dir: FileSystemDirectoryHandle, path: string): Promise<void> => {
      for await (const [name, h] of (
        dir as unknown as { entries(): AsyncIterable<[string, FileSystemHandle]> }
      ).entries()) {
        if (h.kind === 'directory') {
          out.dirs.push(path + name);
          await walk(h as FileSystemDirectoryHandle, path + name + '/');
          continue;
        }
        const bytes = new Uint8Array(
          await (await (h as FileSystemFileHandle).getFile()).arrayBuffer(),
        );
        out.files++;
        out.bytes += bytes.length;
        const hay = Array.from(bytes, (b) => String.fromCharCode(b)).join('');
        for (const n of needles) {
          const nb = Array.from(enc.encode(n), (b) => String.fromCharCode(b)).join('');
          if (hay.includes(nb) && !out.found.includes(n)) out.found.push(n);
        }
      }
    };
    await walk(await navigator.storage.getDirectory(), '');
    return out;
  }, needles);
}

test('search as you type, open in context, survive a reload, gone after logout', async () => {
  const alice = await register(env.browser, env.server, uniqueName('alice'));
  const bob = await register(env.browser, env.server, uniqueName('bob'));
  await startDirect(alice, bob.name);
  await sendText(alice, 'hello bob');
  await acceptRequest(bob);
  await openConversation(bob, alice.name);
  await expectMessage(bob, 'hello bob');
  await searchReady(bob.page);

  const texts = [
    'Rendez-vous au Café de Flore à midi',
    '東京タワーで会いましょう',
    `the needle ${MARKER} is here`,
  ];
  for (const t of texts) await sendText(alice, t);
  for (let i = 1; i <= AFTER; i++) await sendText(alice, `filler ${i}`);
  await expectMessage(bob, `filler ${AFTER}`);
  await expect.poll(() => indexed(bob.page), { timeout: 30_000 }).toBe(texts.length + AFTER + 1);

  // As you type: a prefix of an accented word, typed without the accent.
  const box = searchBox(bob.page);
  await box.pressSequentially('caf', { delay: 40 });
  await expect(hits(bob.page)).toHaveCount(1);
  await expect(hits(bob.page).first()).toContainText('Rendez-vous');
  await expect(hits(bob.page).first().locator('mark')).toHaveText('Café');
  await expect(bob.page.getByRole('status').filter({ hasText: '1 message found.' })).toBeVisible();

  // A CJK word.
  await box.fill('東京');
  await expect(hits(bob.page)).toHaveCount(1);
  await expect(hits(bob.page).first()).toContainText('東京タワー');

  // Nothing for a word nobody wrote; the results are accessible while open.
  await box.fill('nowhere');
  await expect(
    bob.page.getByRole('status').filter({ hasText: 'No messages found.' }),
  ).toBeVisible();
  await box.fill('needle');
  await expect(hits(bob.page)).toHaveCount(1);
  const axe = await new AxeBuilder({ page: bob.page })
    .withTags(['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'])
    .analyze();
  expect(axe.violations.map((v) => `${v.id}: ${v.help}`)).toEqual([]);

  // The files of the index: present, and none of the texts readable in them.
  await bob.page.evaluate(() => (window as unknown as TernSearchWindow).tern.stopSearch());
  const scan = await scanOpfs(bob.page, [MARKER, 'Rendez-vous', '東京タワー', 'filler 1']);
  expect(scan.files).toBeGreaterThan(0);
  expect(scan.bytes).toBeGreaterThan(8192);
  expect(scan.found).toEqual([]);
  await bob.page.evaluate(() => (window as unknown as TernSearchWindow).tern.startSearch());
  await searchReady(bob.page);

  // The index survives a reload with the server down: nothing is decrypted again, yet found.
  await env.server.kill();
  await bob.page.reload();
  await searchReady(bob.page);
  expect(await indexed(bob.page)).toBe(texts.length + AFTER + 1);
  await searchBox(bob.page).fill('needle');
  await expect(hits(bob.page)).toHaveCount(1);
  await env.server.restart();
  await expect(bob.page.getByTestId('connection')).toHaveAttribute('data-status', 'connected', {
    timeout: 30_000,
  });

  // Keyboard only: down to the result, Enter opens it in its conversation, scrolled to it,
  // highlighted and focused, with the messages before and after it loaded around it.
  await searchBox(bob.page).focus();
  await bob.page.keyboard.press('ArrowDown');
  await expect(searchBox(bob.page)).toHaveAttribute('aria-activedescendant', /.+/);
  await bob.page.keyboard.press('Enter');
  await expect(bob.page.getByRole('heading', { level: 1, name: alice.name })).toBeVisible();
  const target = bob.page.locator('[data-highlighted="true"]');
  await expect(target).toContainText(MARKER);
  await expect(target).toBeInViewport();
  await expect(target).toBeFocused();
  const seq = Number(await target.getAttribute('data-seq'));
  const timeline = bob.page.getByTestId('timeline');
  await expect(timeline.locator(`[data-seq="${seq - 1}"]`)).toContainText('東京タワー');
  await expect(timeline.locator(`[data-seq="${seq + 1}"]`)).toContainText('filler 1');
  // The newer messages after the around page load on request (what the timeline asks for when
  // it is scrolled near its end; that trigger is not exercised here, see the websearch notes).
  await bob.page.evaluate(async () => {
    const t = (
      window as unknown as {
        tern: { loadNewer(c: string): Promise<void>; store: { getState(): { selected?: string } } };
      }
    ).tern;
    await t.loadNewer(t.store.getState().selected ?? '');
  });
  await timeline.evaluate((el) => (el.scrollTop = el.scrollHeight));
  await expect(timeline.getByText(`filler ${AFTER}`, { exact: true })).toBeVisible();

  // Logout deletes the index: no OPFS directory of it and no key left.
  await bob.page.getByRole('button', { name: 'Log out' }).click();
  await expect(bob.page.getByRole('button', { name: 'Create account' }).last()).toBeVisible();
  const after = await scanOpfs(bob.page, [MARKER]);
  expect(after.dirs.filter((d) => d.startsWith('tern-search'))).toEqual([]);
  expect(after.files).toBe(0);
  const dbs = await bob.page.evaluate(async () =>
    (await indexedDB.databases()).map((d) => d.name ?? '').filter((n) => n.startsWith('tern:')),
  );
  expect(dbs).toEqual([]);
  await alice.context.close();
  await bob.context.close();
});

// Safety: hostile text in messages and group names renders as text and runs nothing (no dialog,
// no CSP violation report); after logout the browser's stored data holds no plaintext.

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
} from './app';

const env = useServerAndBrowser();

const PAYLOADS = [
  '<img src=x onerror=alert(1)>',
  '<script>alert(2)</script>',
  '"><svg onload=alert(3)>',
  '<a href="javascript:alert(4)">click</a>',
];

/** Records dialogs and CSP violations on a page. */
async function watch(
  page: Page,
): Promise<{ dialogs: string[]; violations: () => Promise<string[]> }> {
  const dialogs: string[] = [];
  page.on('dialog', (d) => {
    dialogs.push(d.message());
    void d.dismiss();
  });
  await page.evaluate(() => {
    const w = window as unknown as { __csp: string[] };
    w.__csp = [];
    document.addEventListener('securitypolicyviolation', (e) =>
      w.__csp.push(`${e.violatedDirective} ${e.blockedURI}`),
    );
  });
  return {
    dialogs,
    violations: () => page.evaluate(() => (window as unknown as { __csp: string[] }).__csp),
  };
}

test('hostile message text and names render as text and run nothing', async () => {
  const alice = await register(env.browser, env.server, uniqueName('alice'));
  const bob = await register(env.browser, env.server, uniqueName('bob'));
  const aliceWatch = await watch(alice.page);
  const bobWatch = await watch(bob.page);

  await startDirect(alice, bob.name);
  for (const p of PAYLOADS) await sendText(alice, p);
  await acceptRequest(bob);
  await openConversation(bob, alice.name);
  for (const p of PAYLOADS) await expectMessage(bob, p);

  for (const page of [alice.page, bob.page]) {
    // Shown literally, never parsed: no element the markup would have made exists.
    await expect(
      page.locator('.timeline img, .timeline script, .timeline svg, .timeline a, main b'),
    ).toHaveCount(0);
  }
  await expect(messages(bob).filter({ hasText: '<script>alert(2)</script>' })).toHaveCount(1);
  // A group whose name and description are markup.
  await bob.page.getByRole('button', { name: 'New group' }).click();
  const form = bob.page.getByRole('form', { name: 'New group' });
  const name = `<b>x</b>${uniqueName('')}`;
  await form.getByLabel('Name', { exact: true }).fill(name);
  await form.getByLabel('Description').fill('<img src=y onerror=alert(5)>');
  await form.getByRole('button', { name: 'Create group' }).click();
  await expect(bob.page.getByRole('heading', { level: 1, name })).toBeVisible();

  await expect(bob.page.locator('main b, main img, nav b')).toHaveCount(0);
  expect(aliceWatch.dialogs).toEqual([]);
  expect(bobWatch.dialogs).toEqual([]);
  expect(await aliceWatch.violations()).toEqual([]);
  expect(await bobWatch.violations()).toEqual([]);
  await alice.context.close();
  await bob.context.close();
});

test('logout clears local data: no plaintext stays in the browser', async () => {
  const alice = await register(env.browser, env.server, uniqueName('alice'));
  const bob = await register(env.browser, env.server, uniqueName('bob'));
  const secret = `marker-${uniqueName('s')}`;
  await startDirect(alice, bob.name);
  await sendText(alice, secret);
  await expect(messages(alice).filter({ hasText: secret }).getByTestId('delivery')).toHaveText(
    /· (Sent|Delivered)/,
  );

  // While signed in, IndexedDB holds the sealed crypto state and metadata, not the message.
  const dump = await alice.page.evaluate(async () => {
    const out: string[] = [];
    for (const info of await indexedDB.databases()) {
      const db = await new Promise<IDBDatabase>((res, rej) => {
        const r = indexedDB.open(info.name as string);
        r.onsuccess = () => res(r.result);
        r.onerror = () => rej(r.error);
      });
      for (const name of Array.from(db.objectStoreNames)) {
        const values = await new Promise<unknown[]>((res) => {
          const r = db.transaction(name).objectStore(name).getAll();
          r.onsuccess = () => res(r.result);
        });
        out.push(
          JSON.stringify(values, (_k, v: unknown) =>
            v instanceof Uint8Array ? new TextDecoder('latin1').decode(v) : v,
          ),
        );
      }
      db.close();
    }
    return out.join('\n');
  });
  expect(dump.length).toBeGreaterThan(0);
  expect(dump).not.toContain(secret);
  // Nor hex-encoded (the outbox stores payloads as hex until the server acknowledges them).
  expect(dump).not.toContain(Buffer.from(secret).toString('hex'));

  await alice.page.getByRole('button', { name: 'Log out' }).click();
  await expect(alice.page.getByRole('heading', { name: 'Create your account' })).toBeVisible();
  const stored = await alice.page.evaluate(async () => {
    const out: string[] = [];
    for (const db of await indexedDB.databases()) out.push(`idb:${db.name}`);
    for (let i = 0; i < localStorage.length; i++) {
      const k = localStorage.key(i) ?? '';
      out.push(`ls:${k}=${localStorage.getItem(k)}`);
    }
    for (let i = 0; i < sessionStorage.length; i++) out.push(`ss:${sessionStorage.key(i)}`);
    for (const c of await caches.keys()) out.push(`cache:${c}`);
    return out;
  });
  expect(stored.filter((s) => s.startsWith('idb:tern') || s.includes('tern.session'))).toEqual([]);
  expect(stored.join('\n')).not.toContain(secret);
  await alice.context.close();
  await bob.context.close();
});

test('safety numbers: both sides see the same 60 digits; marking verified sticks', async () => {
  const alice = await register(env.browser, env.server, uniqueName('alice'));
  const bob = await register(env.browser, env.server, uniqueName('bob'));
  await startDirect(alice, bob.name);
  await sendText(alice, 'let us verify');
  await acceptRequest(bob);
  await openConversation(bob, alice.name);
  await expectMessage(bob, 'let us verify');

  await alice.page.getByRole('button', { name: 'Verify', exact: true }).click();
  await bob.page.getByRole('button', { name: 'Verify', exact: true }).click();
  const aliceNumber = await alice.page.getByTestId('safety-number').textContent();
  const bobNumber = await bob.page.getByTestId('safety-number').textContent();
  expect(aliceNumber).toMatch(/^\d{60}$/);
  expect(aliceNumber).toBe(bobNumber);
  await alice.page
    .getByRole('button', { name: `They match: mark ${bob.name} as verified` })
    .click();
  await expect(alice.page.getByText(`${bob.name} is verified.`)).toBeVisible();
  await alice.page.reload();
  await openConversation(alice, bob.name);
  await alice.page.getByRole('button', { name: 'Verify', exact: true }).click();
  await expect(alice.page.getByText(`${bob.name} is verified.`)).toBeVisible();
  await alice.context.close();
  await bob.context.close();
});

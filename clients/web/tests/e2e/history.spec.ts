// Infinite history: a conversation longer than one page opens at its newest messages (after a
// reload nothing is stored locally: the history comes from the server, decrypted again) and
// scrolling to the top fetches the older pages until the first message.

import { expect, test } from '@playwright/test';
import { uniqueName, useServerAndBrowser } from './harness';
import {
  acceptRequest,
  expectMessage,
  openConversation,
  register,
  sendText,
  startDirect,
} from './app';

const COUNT = 70; // more than one history page (50)

const env = useServerAndBrowser();

test('history: newest page first, older pages on scrolling up, down to the first message', async () => {
  const alice = await register(env.browser, env.server, uniqueName('alice'));
  const bob = await register(env.browser, env.server, uniqueName('bob'));
  await startDirect(alice, bob.name);
  await sendText(alice, 'history 1');
  await acceptRequest(bob);
  await openConversation(bob, alice.name);
  await expectMessage(bob, 'history 1');
  for (let i = 2; i <= COUNT; i++) await sendText(alice, `history ${i}`);
  await expectMessage(bob, `history ${COUNT}`);

  await bob.page.reload();
  await openConversation(bob, alice.name);
  await expectMessage(bob, `history ${COUNT}`);
  const seqs = () =>
    bob.page.evaluate(() => {
      const s = (
        window as unknown as {
          tern: {
            store: {
              getState(): {
                selected?: string;
                timelines: Record<string, { items: { seq?: number; text: string | null }[] }>;
              };
            };
          };
        }
      ).tern.store.getState();
      return (s.timelines[s.selected ?? '']?.items ?? [])
        .filter((i) => i.text !== null)
        .map((i) => i.seq ?? 0);
    });
  const first = await seqs();
  expect(first.length).toBeLessThan(COUNT);
  const timeline = bob.page.getByTestId('timeline');
  for (let i = 0; i < 10 && (await seqs())[0] !== 1; i++) {
    await timeline.evaluate((el) => (el.scrollTop = 0));
    await bob.page.waitForTimeout(300);
  }
  const all = await seqs();
  expect(all).toEqual(Array.from({ length: COUNT }, (_, i) => i + 1));
  await timeline.evaluate((el) => (el.scrollTop = 0));
  await expect(
    bob.page.getByTestId('message').locator('.text').getByText('history 1', { exact: true }),
  ).toBeVisible();
  await alice.context.close();
  await bob.context.close();
});

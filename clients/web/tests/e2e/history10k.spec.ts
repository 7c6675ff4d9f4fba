// Issue 12, "a 10,000-message conversation scrolls with a bounded number of DOM rows", with real
// messages: Alice, on the native client (tern-cli: the same tern-core, Megolm and outbox the page
// runs as wasm), sends 10,000 end-to-end-encrypted messages through the server and its store
// while Bob's page is away. Bob comes back (the resume replays only the newest
// `resume_backlog_messages`, the rest is left to History), opens the conversation and scrolls up
// page by page to the first message, decrypting every page; at every step the timeline holds at
// most MAX_DOM_ROWS message rows. (The page's own send path is chat.spec's, offline.spec's and
// bench.spec's; sending 10,000 through it took five minutes of every CI run.)

import { expect, test } from '@playwright/test';
import { launchChromium, makePki, startServer, uniqueName, type Pki, type Server } from './harness';
import { acceptRequest, expectMessage, openConversation, register, type User } from './app';
import { registerCli } from './cli';
import type { Browser } from '@playwright/test';

const COUNT = Number(process.env.TERN_WEB_HISTORY_MESSAGES ?? 10_000);
/** What a virtualised timeline renders at most (the visible rows and their overscan): a few
 * dozen, whatever the length of the conversation. */
const MAX_DOM_ROWS = 80;

let pki: Pki;
let server: Server;
let browser: Browser;

test.beforeAll(async () => {
  pki = makePki();
  server = await startServer({
    pki,
    config: [
      // One device sends 10,000 messages as fast as it can: the default buckets (1,000
      // burst + 100/s per device, 2,000 + 200/s per user) would make the test wait ~90 s.
      'device_send_burst = 20000',
      'device_sends_per_sec = 10000',
      'user_send_burst = 20000',
      'user_sends_per_sec = 10000',
      'conversation_send_burst = 20000',
      'conversation_sends_per_sec = 10000',
      // Bob's resume replays the newest 50 messages; the 9,950 before are read through History.
      'resume_backlog_messages = 50',
    ],
  });
  browser = await launchChromium(pki);
});

test.afterAll(async () => {
  await browser?.close();
  await server?.stop();
});

type TernWindow = {
  tern: {
    store: {
      getState(): {
        selected?: string;
        timelines: Record<
          string,
          { items: { seq?: number; text: string | null }[]; hasMoreBefore?: boolean }
        >;
      };
    };
  };
};

/** Seqs of the decrypted messages in the selected conversation's timeline, and the DOM rows. */
async function timelineState(u: User): Promise<{ seqs: number[]; rows: number; pending: number }> {
  return u.page.evaluate(() => {
    const s = (window as unknown as TernWindow).tern.store.getState();
    const items = s.timelines[s.selected ?? '']?.items ?? [];
    return {
      seqs: items.filter((i) => i.text !== null && i.seq !== undefined).map((i) => i.seq ?? 0),
      pending: items.filter((i) => i.text === null).length,
      rows: document.querySelectorAll('[data-testid=timeline] [data-testid=message]').length,
    };
  });
}

test(`a ${COUNT}-message conversation: history scrolls to the first message with bounded DOM rows`, async () => {
  // 10,000 sends from the CLI and ~200 page loads: ~6 min on the slower 2-vCPU hosts.
  test.setTimeout(1_200_000);
  const bob = await register(browser, server, uniqueName('bob'));
  const alice = await registerCli(server, pki, uniqueName('alice'));
  await alice.run(['dm', bob.name]);
  await alice.run(['chat', `@${bob.name}`], 'message 1\n');
  await acceptRequest(bob);
  await openConversation(bob, alice.name);
  await expectMessage(bob, 'message 1');
  // Bob goes away (his keys and cursor stay in this browser profile).
  await bob.page.goto('about:blank');

  const started = Date.now();
  const lines = Array.from({ length: COUNT - 1 }, (_, i) => `message ${i + 2}\n`).join('');
  // `chat` sends each line and waits for its acknowledgement before the next; it exits at the
  // end of its input, so every message is stored when it returns.
  const sent = await alice.run(['chat', `@${bob.name}`], lines, 900_000);
  expect(sent).toContain(`me: message ${COUNT}`);
  const sendMs = Date.now() - started;
  console.log(
    `RESULT ${COUNT} messages sent through tern-cli (encrypt, Send, ack, one at a time): ${sendMs} ms`,
  );

  const back = Date.now();
  await bob.page.goto(server.origin + '/');
  await expect(bob.page.getByTestId('connection')).toHaveAttribute('data-status', 'connected', {
    timeout: 30_000,
  });
  await openConversation(bob, alice.name);
  await expectMessage(bob, `message ${COUNT}`);
  const timeline = bob.page.getByTestId('timeline');
  let state = await timelineState(bob);
  const rows: number[] = [state.rows];
  // Each scroll to the top loads one page (50) of older messages; bounded by the page count.
  const maxSteps = Math.ceil(COUNT / 50) + 20;
  for (let step = 0; step < maxSteps && state.seqs[0] !== 1; step++) {
    const oldest = state.seqs[0];
    await timeline.evaluate((el) => (el.scrollTop = 0));
    await expect
      .poll(
        async () => {
          state = await timelineState(bob);
          rows.push(state.rows);
          return state.seqs[0];
        },
        { timeout: 20_000, intervals: [50, 100, 200], message: `older than ${oldest} loaded` },
      )
      .not.toBe(oldest);
    // The reader's place is kept: the message that was at the top is still on screen, not
    // pushed down by the page prepended above it (a stuck view gets no scroll event to load
    // the next page).
    await expect(
      timeline.getByTestId('message').locator('.text').getByText(`message ${oldest}`, {
        exact: true,
      }),
    ).toBeVisible({ timeout: 5_000 });
  }
  const scrollMs = Date.now() - back;
  state = await timelineState(bob);
  rows.push(state.rows);
  expect(state.pending, 'every message decrypted').toBe(0);
  expect(state.seqs).toEqual(Array.from({ length: COUNT }, (_, i) => i + 1));
  await timeline.evaluate((el) => (el.scrollTop = 0));
  await expect(
    bob.page.getByTestId('message').locator('.text').getByText('message 1', { exact: true }),
  ).toBeVisible();
  rows.push((await timelineState(bob)).rows);
  console.log(
    `RESULT ${COUNT}-message conversation from real history: scrolled to the first message in ` +
      `${scrollMs} ms; DOM message rows at ${rows.length} samples: max ${Math.max(...rows)}, ` +
      `min ${Math.min(...rows)}`,
  );
  for (const n of rows) expect(n).toBeLessThanOrEqual(MAX_DOM_ROWS);
  expect(Math.min(...rows)).toBeGreaterThan(0);
  await bob.context.close();
});

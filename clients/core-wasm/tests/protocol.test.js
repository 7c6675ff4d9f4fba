// Node test of the protocol classes (run by ../test.sh): Delivery, Outbox, Drain, Reconnect,
// Backoff, isPermanentConnectFailure. Each class is driven the way the page drives it, with
// decoded server messages as JSON; malformed input throws.
'use strict';
const { test } = require('node:test');
const assert = require('node:assert');
const path = require('node:path');
const { randomUUID } = require('node:crypto');

const pkgDir = process.env.TERN_WASM_PKG;
assert.ok(pkgDir, 'TERN_WASM_PKG must be set (use test.sh)');
const w = require(path.resolve(pkgDir, 'tern_core_wasm.js'));
const j = JSON.stringify;

const user = randomUUID();
const device = randomUUID();
function message(conversation, seq) {
  return {
    conversation, seq, message_id: randomUUID(), sender_user: user, sender_device: device,
    client_msg_id: seq.toString(16).padStart(32, '0'), timestamp_ms: 1000 + seq,
    content_type: 'text', payload: Buffer.from(`m${seq}`).toString('hex'), files: [],
  };
}
const deliver = (conversation, seq) => j({ type: 'deliver', message: message(conversation, seq) });
function popAll(d) {
  const out = [];
  let e;
  while ((e = d.pop()) !== undefined) out.push(JSON.parse(e));
  return out;
}
const seqs = (events) => events.filter((e) => e.kind === 'message').map((e) => e.message.seq);

test('Delivery: in order, once, gaps fetched, acks only after the page took a message', () => {
  const c = randomUUID();
  const d = new w.Delivery('[]');
  d.onConnect();
  assert.equal(d.onServerMessage(deliver(c, 1)), true);
  assert.equal(d.onServerMessage(deliver(c, 2)), true);
  assert.equal(d.onServerMessage(deliver(c, 2)), true, 'a duplicate is taken (and dropped)');
  assert.deepStrictEqual(JSON.parse(d.acksDue()), [], 'nothing taken yet: nothing to ack');
  assert.deepStrictEqual(seqs(popAll(d)), [1, 2]);
  const acks = JSON.parse(d.acksDue());
  assert.deepStrictEqual(acks, [{ type: 'ack', conversation: c, seq: 2 }]);
  assert.ok(w.encodeClient(j(acks[0]), 65536).length > 0, 'an ack is a ClientMessage');
  d.onAckSent(c, 2);
  assert.deepStrictEqual(JSON.parse(d.acksDue()), []);

  // 5 arrives before 3 and 4: held back, the gap is fetched with history.
  d.onServerMessage(deliver(c, 5));
  assert.deepStrictEqual(popAll(d), []);
  assert.equal(d.hasGap(), true);
  const fetch = JSON.parse(d.nextGapFetch(42));
  assert.deepStrictEqual(fetch, { type: 'history', request_id: 42, conversation: c, before_seq: 5,
    after_seq: 2, limit: 2 });
  assert.ok(w.encodeClient(j(fetch), 65536).length > 0);
  d.onHistoryPage(j({ type: 'history_page', request_id: 42, conversation: c,
    messages: [message(c, 3), message(c, 4)], reactions: [], has_more: false }));
  assert.equal(d.hasGap(), false);
  assert.deepStrictEqual(seqs(popAll(d)), [3, 4, 5]);

  // Our own send (seq 6) is never delivered back: no gap before 7.
  d.onOwnSend(c, 6);
  d.onServerMessage(deliver(c, 7));
  assert.equal(d.nextGapFetch(1), undefined);
  assert.deepStrictEqual(seqs(popAll(d)), [7]);

  d.onServerMessage(j({ type: 'sync_complete' }));
  assert.equal(d.isSynced(), true);
  d.push(j({ mine: 1 }));
  d.onServerMessage(j({ type: 'notice', notice: { type: 'backlog_truncated', conversation: c,
    from_seq: 8, to_seq: 20 } }));
  const rest = popAll(d);
  assert.deepStrictEqual(rest.map((e) => e.kind), ['sync_complete', 'event', 'skipped', 'ack_only']);
  assert.deepStrictEqual(rest[1].event, { mine: 1 });
  assert.equal(rest[2].reason, 'backlog_truncated');
  assert.equal(d.onServerMessage(j({ type: 'pong', nonce: 1 })), false, 'not delivery: the page handles it');

  // Persisted cursors: a new run does not surface what was taken.
  const cursors = d.cursors();
  assert.deepStrictEqual(JSON.parse(cursors), [{ conversation: c, seq: 20 }]);
  const again = new w.Delivery(cursors);
  assert.deepStrictEqual(JSON.parse(again.resumeCursors()), [{ conversation: c, seq: 20 }]);
  again.onServerMessage(deliver(c, 20));
  again.onServerMessage(deliver(c, 21));
  assert.deepStrictEqual(seqs(popAll(again)), [21]);
});

test('Delivery: a history page that does not fill the gap skips it (never blocks forever)', () => {
  const c = randomUUID();
  const d = new w.Delivery(j([{ conversation: c, seq: 1 }]));
  d.onServerMessage(deliver(c, 4));
  d.onHistoryPage(j({ conversation: c, messages: [] }));
  const out = popAll(d);
  assert.deepStrictEqual(out.map((e) => e.kind), ['skipped', 'message']);
  assert.equal(out[0].reason, 'unavailable');
  assert.deepStrictEqual([out[0].from_seq, out[0].to_seq], [2, 3]);
});

test('Delivery: onDeliver / onSyncComplete / hasReady (the individual entry points)', () => {
  const c = randomUUID();
  const d = new w.Delivery('[]');
  assert.equal(d.hasReady(), false);
  d.onDeliver(j(message(c, 1)));
  d.onSyncComplete();
  assert.equal(d.hasReady(), true);
  assert.deepStrictEqual(popAll(d).map((e) => e.kind), ['message', 'sync_complete']);
  assert.equal(d.hasReady(), false);
});

test('Delivery: malformed input throws', () => {
  assert.throws(() => new w.Delivery('{'), /invalid cursors JSON/);
  const d = new w.Delivery('[]');
  assert.throws(() => d.onDeliver('{}'), /invalid message JSON/);
  assert.throws(() => d.onServerMessage('{"type":"deliver"}'), /invalid server message JSON/);
  assert.throws(() => d.onOwnSend('nope', 1), /invalid conversation id/);
  assert.throws(() => d.onOwnSend(randomUUID(), -1), /seq must be a non-negative integer/);
  assert.throws(() => d.onOwnSend(randomUUID(), 1.5), /seq must be/);
  assert.throws(() => d.nextGapFetch(NaN), /request_id must be/);
  assert.throws(() => d.onHistoryPage('[]'), /invalid history page JSON/);
  assert.throws(() => d.push('nope'), /invalid event JSON/);
});

test('Outbox: compose order, entries the page stores, acks remove, reload keeps order', () => {
  const c = randomUUID();
  const o = new w.Outbox();
  assert.deepStrictEqual(JSON.parse(o.limits()), { max_entries: 10000, max_bytes: 64 * 1024 * 1024,
    max_payload_bytes: 40960 });
  const a = JSON.parse(o.compose(c, 'text', Buffer.from('first'), 10));
  const b = JSON.parse(o.compose(c, 'text', Buffer.from('second'), 11));
  assert.match(a.client_msg_id, /^[0-9a-f]{32}$/);
  assert.notEqual(a.client_msg_id, b.client_msg_id);
  assert.deepStrictEqual(a, { client_msg_id: a.client_msg_id, conversation: c, content_type: 'text',
    payload: Buffer.from('first').toString('hex'), created_ms: 10 });
  assert.equal(o.len(), 2);
  assert.equal(o.bytes(), 'first'.length + 'second'.length + 2 * 'text'.length);
  assert.deepStrictEqual(JSON.parse(o.front()), a);
  assert.deepStrictEqual(JSON.parse(o.get(b.client_msg_id)), b);
  assert.equal(o.get('f'.repeat(32)), undefined);

  // Reload from what the page stored: same order, same ids.
  const reloaded = w.Outbox.fromLoaded(o.entries());
  assert.deepStrictEqual(JSON.parse(reloaded.entries()), [a, b]);

  // A send_ack for another conversation does not remove it; the right one does.
  const ack = { type: 'send_ack', request_id: 1, conversation: c, client_msg_id: a.client_msg_id,
    seq: 1, message_id: randomUUID(), timestamp_ms: 1, duplicate: false };
  assert.equal(o.onAcked(j({ ...ack, conversation: randomUUID() })), undefined);
  assert.deepStrictEqual(JSON.parse(o.onAcked(j(ack))), a);
  assert.equal(o.onAcked(j(ack)), undefined, 'a late second ack finds nothing');
  assert.deepStrictEqual(JSON.parse(o.front()), b);
  assert.deepStrictEqual(JSON.parse(o.remove(b.client_msg_id)), b);
  assert.equal(o.isEmpty(), true);
  assert.equal(o.front(), undefined);
});

test('Outbox: limits refuse new entries (naming sizes), keep what is queued; bad input throws', () => {
  const c = randomUUID();
  const o = new w.Outbox(j({ max_entries: 2, max_bytes: 60, max_payload_bytes: 50 }));
  o.compose(c, 'text', Buffer.alloc(10), 1);
  assert.throws(() => o.compose(c, 'text', Buffer.alloc(51), 2), /message too large: 51 bytes, at most 50/);
  assert.throws(() => o.compose(c, 'text', Buffer.alloc(50), 2), /outbox full: 1 messages \(14 bytes\)/);
  o.compose(c, 'text', Buffer.alloc(5), 3);
  assert.throws(() => o.compose(c, 'text', Buffer.alloc(1), 4), /outbox full: 2 messages .* limits are 2 messages and 60 bytes/);
  assert.equal(o.len(), 2);
  // Entries beyond lowered limits are kept on reload.
  const small = w.Outbox.fromLoaded(o.entries(), j({ max_entries: 1 }));
  assert.equal(small.len(), 2);
  assert.throws(() => small.compose(c, 'text', Buffer.alloc(1), 5), /outbox full/);

  const e = JSON.parse(o.front());
  assert.throws(() => w.Outbox.fromLoaded(j([e, e])), /repeat client_msg_id/);
  assert.throws(() => w.Outbox.fromLoaded(j([{ ...e, payload: 'xyz' }])), /invalid outbox entries JSON/);
  assert.throws(() => w.Outbox.fromLoaded(j([{ ...e, client_msg_id: '12' }])), /invalid outbox entries JSON/);
  assert.throws(() => w.Outbox.fromLoaded(j([{ ...e, extra: 1 }])), /unknown field/);
  assert.throws(() => new w.Outbox(j({ max_entries: 0 })), /at least 1/);
  assert.throws(() => new w.Outbox(j({ max_entris: 3 })), /unknown field/);
  assert.throws(() => o.compose('nope', 'text', Buffer.alloc(1), 1), /invalid conversation id/);
  assert.throws(() => o.compose(c, '', Buffer.alloc(1), 1), /content type is empty/);
  assert.throws(() => o.compose(c, 'text', Buffer.alloc(1), -5), /now_ms must be/);
  assert.throws(() => o.remove('zz'), /invalid client_msg_id/);
  assert.throws(() => o.onAcked('{"type":"send_ack"}'), /invalid send_ack JSON/);
});

test('Drain: rejections drop the entry, rate limits wait, transient failures park', () => {
  const c = randomUUID();
  const o = new w.Outbox();
  const r = new w.Reconnect(j({ base_ms: 100, cap_ms: 1000 }), 7);
  const d = new w.Drain();
  assert.deepStrictEqual(JSON.parse(d.gate()), { state: 'open' });
  const a = JSON.parse(o.compose(c, 'text', Buffer.from('a'), 1));
  const b = JSON.parse(o.compose(c, 'text', Buffer.from('b'), 2));

  // rate_limited with retry_after 500: the gate opens at now + max(500, backoff <= 100).
  const limited = { type: 'error', request_id: 3, code: 'rate_limited', message: 'slow down',
    fatal: false, retry_after_ms: 500 };
  const retry = JSON.parse(d.onSendFailed(o, a.client_msg_id, j(limited), undefined, r, 1000));
  assert.deepStrictEqual(retry, { decision: 'retry', gate: { state: 'at', at_ms: 1500 } });
  assert.equal(d.retryAt(), 1500);
  assert.equal(d.mayDrain(1499), false);
  assert.equal(d.mayDrain(1500), true);
  assert.equal(o.len(), 2, 'a rate-limited entry stays');

  // A permanent rejection removes the entry and says so.
  const refused = { type: 'error', request_id: 4, code: 'forbidden', message: 'not a member',
    fatal: false, retry_after_ms: 0 };
  const rej = JSON.parse(d.onSendFailed(o, a.client_msg_id, j(refused), undefined, r, 2000));
  assert.equal(rej.decision, 'rejected');
  assert.deepStrictEqual(rej.rejected, { client_msg_id: a.client_msg_id, conversation: c,
    code: 'forbidden', message: 'not a member' });
  assert.deepStrictEqual(rej.removed, a);
  assert.equal(o.len(), 1);
  assert.equal(JSON.parse(d.takeRejected()).length, 1);
  assert.deepStrictEqual(JSON.parse(d.takeRejected()), []);

  // A fatal error or a lost connection parks until the next connection.
  const parked = JSON.parse(d.onSendFailed(o, b.client_msg_id, j({ kind: 'transient' }), 'timeout', r, 3000));
  assert.deepStrictEqual(parked, { decision: 'retry', gate: { state: 'parked' } });
  assert.equal(d.mayDrain(1e9), false);
  d.onConnected();
  assert.equal(d.mayDrain(3001), true);
  const tooBig = JSON.parse(d.onSendFailed(o, b.client_msg_id, j({ kind: 'frame_too_large' }), 'big', r, 4000));
  assert.equal(tooBig.rejected.code, 'frame_too_large');
  assert.equal(o.len(), 0);

  const c2 = JSON.parse(o.compose(c, 'text', Buffer.from('c'), 5));
  assert.throws(() => d.onSendFailed(o, '0'.repeat(32), j({ kind: 'transient' }), undefined, r, 1), /no outbox entry/);
  assert.throws(() => d.onSendFailed(o, c2.client_msg_id, j({ kind: 'boom' }), undefined, r, 1), /invalid failure JSON/);
  assert.throws(() => d.onSendFailed(o, c2.client_msg_id, j({ kind: 'coded', code: 'nope' }), undefined, r, 1), /invalid failure JSON/);
  assert.throws(() => d.onSendFailed(o, c2.client_msg_id, j({ type: 'error', code: 'x' }), undefined, r, 1), /invalid server error JSON/);
  assert.equal(o.len(), 1, 'a malformed failure changes nothing');
});

test('Reconnect: at once after a stable connection, backoff while flapping, GoingAway floor', () => {
  const r = new w.Reconnect(j({ base_ms: 100, cap_ms: 10000, reset_after_ms: 5000 }), 3);
  r.onConnected(0);
  r.begin(60000);
  assert.equal(r.lastUptimeMs(), undefined, 'begin consumed it');
  assert.equal(r.nextAttemptDelayMs(), 0);
  assert.ok(r.nextAttemptDelayMs() <= 100);
  assert.ok(r.nextAttemptDelayMs() <= 200);
  assert.equal(r.attempt(), 2);
  assert.equal(r.ceilingMs(), 400);
  // Up for 1 s (< reset_after): no reset, the first attempt waits.
  r.onConnected(70000);
  r.onDisconnected(71000);
  assert.equal(r.lastUptimeMs(), 1000);
  r.begin(71000);
  assert.equal(r.attempt(), 2);
  assert.ok(r.nextAttemptDelayMs() <= 400);
  // A going_away notice is a floor for the next delay only.
  r.onConnected(80000);
  r.onGoingAway(7000);
  r.begin(90000);
  assert.equal(r.nextAttemptDelayMs(), 7000);
  assert.ok(r.nextAttemptDelayMs() < 7000);

  assert.throws(() => new w.Reconnect(j({ base_ms: 0 })), /0 < base_ms <= cap_ms/);
  assert.throws(() => new w.Reconnect(j({ base: 5 })), /unknown field/);
  assert.throws(() => new w.Reconnect(undefined, -1), /seed must be/);
  assert.throws(() => r.begin(-1), /now_ms must be/);
});

test('Backoff: ceilings double to the cap, same seed same schedule', () => {
  const b = new w.Backoff(undefined, 42);
  const ceilings = [];
  for (let i = 0; i < 9; i++) {
    ceilings.push(b.ceilingMs());
    assert.ok(b.nextDelayMs() <= ceilings[i]);
  }
  assert.deepStrictEqual(ceilings, [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
  b.reset();
  assert.equal(b.attempt(), 0);
  const run = (seed) => { const x = new w.Backoff(undefined, seed); return [1, 2, 3, 4].map(() => x.nextDelayMs()); };
  assert.deepStrictEqual(run(5), run(5));
  assert.notDeepStrictEqual(run(5), run(6));
  assert.ok(new w.Backoff().nextDelayMs() <= 250, 'random seed');
});

test('isPermanentConnectFailure', () => {
  const err = (code, fatal) => j({ type: 'error', request_id: 0, code, message: 'x', fatal, retry_after_ms: 0 });
  assert.equal(w.isPermanentConnectFailure(err('unauthenticated', true)), true);
  assert.equal(w.isPermanentConnectFailure(err('token_revoked', true)), true);
  assert.equal(w.isPermanentConnectFailure(err('forbidden', true)), true);
  assert.equal(w.isPermanentConnectFailure(err('unsupported_version', true)), true);
  assert.equal(w.isPermanentConnectFailure(err('server_shutdown', true)), false);
  assert.equal(w.isPermanentConnectFailure(j({ kind: 'transient' })), false);
  assert.equal(w.isPermanentConnectFailure(j({ kind: 'setup' })), true);
  assert.equal(w.isPermanentConnectFailure(j({ kind: 'coded', code: 'token_revoked' })), true);
  assert.throws(() => w.isPermanentConnectFailure('{'), /invalid failure JSON/);
});

test('DeliveryMarks: delivered per other member, marks only move forward, bad input throws', () => {
  const c = randomUUID();
  const [me, bob, carol] = [randomUUID(), randomUUID(), randomUUID()];
  const m = new w.DeliveryMarks();
  const state = (seq, members) => JSON.parse(m.state(c, seq, me, j(members)));
  assert.deepStrictEqual(state(2, [me, bob]), { delivered: 0, recipients: 1 });
  assert.equal(m.apply(c, j([{ user: bob, seq: 2 }])), true);
  assert.deepStrictEqual(state(2, [me, bob]), { delivered: 1, recipients: 1 });
  assert.deepStrictEqual(state(3, [me, bob]), { delivered: 0, recipients: 1 });
  assert.equal(m.apply(c, j([{ user: bob, seq: 1 }])), false, 'an older mark changes nothing');
  assert.deepStrictEqual(state(2, [me, bob, carol]), { delivered: 1, recipients: 2 });
  m.apply(c, j([{ user: carol, seq: 5 }]));
  assert.deepStrictEqual(state(2, [me, bob, carol]), { delivered: 2, recipients: 2 });
  m.forget(c);
  assert.deepStrictEqual(state(2, [me, bob]), { delivered: 0, recipients: 1 });
  assert.throws(() => m.apply('not-a-uuid', '[]'));
  assert.throws(() => m.apply(c, '[{"user": 1}]'));
  assert.throws(() => m.state(c, -1, me, '[]'));
});

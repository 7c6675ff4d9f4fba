// The key directory's round trips for the crypto machine: publishing this device's keys and
// fetching device lists (QueryKeys). Claims happen in the send plan (sender.ts).

import type { Connection } from './connection';
import type { Device } from './context';
import type { DeviceKeys } from './protocol';
import type { TrustEvent } from './wasm';

/** Publishes this device's keys when the machine has new ones (first connection, one-time
 * keys running low: `left` is the server's count). */
export async function publishKeys(conn: Connection, device: Device, left: number): Promise<void> {
  const keys = device.machine.keysToPublish(left);
  if (!keys) return;
  await conn.request((request_id) => ({ type: 'publish_keys', request_id, keys }));
  device.machine.markKeysPublished();
  await device.persist();
}

/** The complete device lists of `users`, fed to the machine. Users the server left out of a
 * full answer are asked again; an answer without progress is an error, never a loop. */
export async function queryDeviceLists(
  conn: Connection,
  device: Device,
  users: string[],
): Promise<TrustEvent[]> {
  if (users.length === 0) return [];
  let pending = [...users];
  const lists = new Map<string, DeviceKeys[]>(users.map((u) => [u, []]));
  while (pending.length > 0) {
    const asked = pending.length;
    const ask = pending;
    const reply = await conn.request((request_id) => ({
      type: 'query_keys',
      request_id,
      users: ask,
    }));
    if (reply.type !== 'key_bundle') throw new Error(`query_keys answered with ${reply.type}`);
    for (const d of reply.devices) lists.get(d.user)?.push(d);
    if (reply.unanswered.length >= asked) throw new Error('query_keys made no progress');
    pending = reply.unanswered;
  }
  const events: TrustEvent[] = [];
  for (const [user, devices] of lists)
    events.push(...device.machine.onDeviceList(user, devices, Date.now()));
  await device.persist();
  return events;
}

// The key backup (recovery passphrase): tern-core seals the message keys with a key derived
// from the passphrase (argon2id); the server stores only the sealed blobs. Set up on one
// device, restored on a new one (after a logout this browser is a new device).

import type { DriverContext } from './context';
import { ApiError } from './http';

/** A passphrase shorter than this is refused: the server can guess offline at argon2id cost. */
export const MIN_PASSPHRASE_CHARS = 10;
/** Upload rounds per call (each up to 1,000 sessions): bounded, never a loop on a bad answer. */
const MAX_UPLOAD_ROUNDS = 100;
/** Pages per restore (each up to the server's page size). */
const MAX_RESTORE_PAGES = 1_000;

export class WrongPassphrase extends Error {
  constructor(cause?: unknown) {
    super('That passphrase does not open the backup.', { cause });
    this.name = 'WrongPassphrase';
  }
}

/** Uploads the sessions not in the backup yet (nothing when no backup is unlocked here). */
export async function uploadBackup(ctx: DriverContext): Promise<number> {
  const device = ctx.device();
  if (!device || device.machine.backupVersion() === undefined) return 0;
  let uploaded = 0;
  for (let round = 0; round < MAX_UPLOAD_ROUNDS; round++) {
    const body = device.machine.backupExportSessions();
    if (body.sessions.length === 0) break;
    await ctx.api.putBackupSessions(body);
    device.machine.backupMarkUploaded(body.sessions.map((s) => s.session_id));
    await device.persist();
    uploaded += body.sessions.length;
  }
  return uploaded;
}

/** Starts a new backup under `passphrase` (replacing any earlier one) and uploads every key. */
export async function createBackup(ctx: DriverContext, passphrase: string): Promise<number> {
  const device = ctx.device();
  if (!device) throw new Error('not signed in');
  if (passphrase.length < MIN_PASSPHRASE_CHARS) {
    throw new Error(`use at least ${MIN_PASSPHRASE_CHARS} characters`);
  }
  const header = device.machine.backupCreate(passphrase, Date.now());
  await device.persist();
  await ctx.api.putKeyBackup(header);
  return uploadBackup(ctx);
}

/** Unlocks the server's backup with `passphrase` and imports every key in it. */
export async function restoreBackup(ctx: DriverContext, passphrase: string): Promise<number> {
  const device = ctx.device();
  if (!device) throw new Error('not signed in');
  let header: unknown;
  try {
    header = await ctx.api.keyBackup();
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) {
      throw new Error('There is no backup for this account yet.', { cause: e });
    }
    throw e;
  }
  try {
    device.machine.backupUnlock(passphrase, header);
  } catch (e) {
    if (e instanceof Error && e.name === 'WrongPassphraseError') throw new WrongPassphrase(e);
    throw e;
  }
  let imported = 0;
  let after: string | undefined;
  for (let page = 0; page < MAX_RESTORE_PAGES; page++) {
    const p = await ctx.api.backupSessions(after);
    imported += device.machine.backupImport(p, Date.now()).imported;
    if (!p.next_after || p.sessions.length === 0) break;
    after = p.next_after;
  }
  await device.persist();
  return imported;
}

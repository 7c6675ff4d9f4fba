// This browser profile's device for one account: a random device id, the crypto machine and
// the 32-byte key its sealed state (pickle) is stored under, all in the account's IndexedDB.

import type { Device } from './context';
import { LocalStore } from './storage';
import type { Core, CryptoMachine } from './wasm';

function randomBytes(n: number): Uint8Array {
  const b = new Uint8Array(n);
  crypto.getRandomValues(b);
  return b;
}

export class BrowserDevice implements Device {
  private constructor(
    readonly id: string,
    readonly machine: CryptoMachine,
    readonly local: LocalStore,
    private readonly pickleKey: Uint8Array,
  ) {}

  /** Opens the account's device, or creates one on first use (or when its state is unreadable). */
  static async open(core: Core, username: string, userId: string): Promise<BrowserDevice> {
    const local = await LocalStore.open(username);
    let id = await local.get<string>('device');
    let key = await local.get<Uint8Array>('pickle_key');
    const sealed = await local.get<Uint8Array>('pickle');
    let machine: CryptoMachine | undefined;
    if (id && key && sealed) {
      try {
        machine = core.unpickleMachine(sealed, key);
      } catch (e) {
        console.warn('crypto state unreadable, starting a new device', e);
      }
    }
    if (!machine || !id || !key) {
      id = crypto.randomUUID();
      key = randomBytes(32);
      machine = core.newMachine(userId, id);
      await local.put('device', id);
      await local.put('pickle_key', key);
    }
    const device = new BrowserDevice(id, machine, local, key);
    await device.persist();
    return device;
  }

  /** The write in progress, and the one write queued behind it for every call made meanwhile. */
  private writing?: Promise<void>;
  private queued?: Promise<void>;

  /**
   * Stores the sealed state as it is now; resolves once a write that began after this call is
   * on disk. Calls made while a write is in progress share one more write: the state is one
   * record holding every session, so sealing it once per decrypted message made a 50-message
   * history page cost 50 full seals (half a second per page in a 10,000-message conversation).
   */
  persist(): Promise<void> {
    if (this.queued) return this.queued;
    if (!this.writing) return this.write();
    this.queued = this.writing
      .catch(() => undefined)
      .then(() => {
        this.queued = undefined;
        return this.write();
      });
    return this.queued;
  }

  private write(): Promise<void> {
    // Sealed now (synchronously): the record holds the state as of this call.
    let sealed: Uint8Array;
    try {
      sealed = this.machine.pickle(this.pickleKey);
    } catch (e) {
      return Promise.reject(e instanceof Error ? e : new Error(String(e)));
    }
    const done = this.local.put('pickle', sealed).finally(() => {
      if (this.writing === done) this.writing = undefined;
    });
    this.writing = done;
    return done;
  }

  close(): void {
    this.machine.free();
    this.local.close();
  }
}

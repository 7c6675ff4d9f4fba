// IndexedDB: one database per signed-in account on this browser profile. It holds the device
// id, the sealed crypto state (the pickle) and its key, and the outbox (messages composed but
// not yet acknowledged by the server). Plaintext of delivered messages is never stored: the
// timeline is rebuilt from the server's (encrypted) history. Logging out deletes the database.

const DB_PREFIX = 'tern:';
const DB_VERSION = 1;
export const KV = 'kv';
export const OUTBOX = 'outbox';

function request<T>(r: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error ?? new Error('IndexedDB request failed'));
  });
}

function done(tx: IDBTransaction): Promise<void> {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error ?? new Error('IndexedDB transaction failed'));
    tx.onabort = () => reject(tx.error ?? new Error('IndexedDB transaction aborted'));
  });
}

export class LocalStore {
  private constructor(private readonly db: IDBDatabase) {}

  static async open(username: string): Promise<LocalStore> {
    const open = indexedDB.open(DB_PREFIX + username, DB_VERSION);
    open.onupgradeneeded = () => {
      const db = open.result;
      if (!db.objectStoreNames.contains(KV)) db.createObjectStore(KV);
      if (!db.objectStoreNames.contains(OUTBOX)) db.createObjectStore(OUTBOX, { keyPath: 'order' });
    };
    return new LocalStore(await request(open));
  }

  async get<T>(key: string): Promise<T | undefined> {
    const tx = this.db.transaction(KV, 'readonly');
    return (await request(tx.objectStore(KV).get(key))) as T | undefined;
  }

  async put(key: string, value: unknown): Promise<void> {
    const tx = this.db.transaction(KV, 'readwrite');
    tx.objectStore(KV).put(value, key);
    await done(tx);
  }

  /** Writes an outbox entry and the crypto state in one transaction. */
  async putOutbox<T extends { order: number }>(entry: T): Promise<void> {
    const tx = this.db.transaction(OUTBOX, 'readwrite');
    tx.objectStore(OUTBOX).put(entry);
    await done(tx);
  }

  async deleteOutbox(order: number): Promise<void> {
    const tx = this.db.transaction(OUTBOX, 'readwrite');
    tx.objectStore(OUTBOX).delete(order);
    await done(tx);
  }

  async outbox<T>(): Promise<T[]> {
    const tx = this.db.transaction(OUTBOX, 'readonly');
    return (await request(tx.objectStore(OUTBOX).getAll())) as T[];
  }

  close(): void {
    this.db.close();
  }
}

/** Deletes every Tern database of this browser profile (logout). */
export async function deleteAllLocalData(): Promise<void> {
  const dbs = await indexedDB.databases();
  await Promise.all(
    dbs
      .filter((d) => d.name?.startsWith(DB_PREFIX))
      .map(
        (d) =>
          new Promise<void>((resolve) => {
            const r = indexedDB.deleteDatabase(d.name as string);
            r.onsuccess = () => resolve();
            r.onerror = () => resolve();
            r.onblocked = () => resolve();
          }),
      ),
  );
  try {
    sessionStorage.clear();
    localStorage.removeItem('tern.session');
  } catch {
    // storage disabled
  }
}

// What the driver's parts share: the HTTPS API, this device's crypto state and local store,
// and the live connection (absent while offline).

import type { Connection } from './connection';
import type { HttpApi } from './http';
import type { LocalStore } from './storage';
import type { CryptoMachine } from './wasm';

export interface Device {
  readonly id: string;
  readonly machine: CryptoMachine;
  readonly local: LocalStore;
  /** Seals and stores the crypto state (before acknowledging shares, before a send leaves). */
  persist(): Promise<void>;
}

export interface DriverContext {
  readonly api: HttpApi;
  device(): Device | undefined;
  connection(): Connection | undefined;
  running(): boolean;
}

export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

// Attachments: a file is encrypted in the page (tern-core's file format v1 through the wasm
// FileEncryptor: a fresh key, 64 KiB chunks each sealed with its index and a last-chunk flag,
// padded to a size bucket) and uploaded over the resumable HTTPS API (create with the exact
// encrypted size, PATCH at offsets, finish); then a message whose end-to-end encrypted body holds
// the key, hash, name, type and size is composed through the outbox like any text. Downloads
// fetch a short-lived signed URL and decrypt while the bytes stream in: every chunk is verified
// as it completes, and the hash of the whole file before anything is offered to the person.

import { errorText, sleep, type DriverContext } from './context';
import { ApiError } from './http';
import type { Core, CoreFileEncryptor, FileBodyJson } from './wasm';
import { notify, useApp, type TransferView } from '../state/store';

export type { FileBodyJson } from './wasm';

/** Bytes of ciphertext per PATCH: small enough that progress moves smoothly and a lost
 * connection repeats little, large enough that request overhead stays under 1 %. */
const PATCH_BYTES = 1024 * 1024;
/** Attempts per PATCH after a network failure (each first asks the server for its offset). */
const MAX_RETRIES = 8;
/** Backoff between attempts: doubled from this, capped at 8 s. */
const RETRY_BASE_MS = 250;
/** Images up to this size are previewed in the timeline (downloaded and decrypted on sight). */
export const PREVIEW_MAX_BYTES = 20 * 1024 * 1024;

function setTransfer(id: string, t: TransferView | undefined): void {
  useApp.setState((s) => {
    const transfers = { ...s.transfers };
    if (t) transfers[id] = t;
    else delete transfers[id];
    return { transfers };
  });
}

function patchTransfer(id: string, p: Partial<TransferView>): void {
  useApp.setState((s) => {
    const cur = s.transfers[id];
    return cur ? { transfers: { ...s.transfers, [id]: { ...cur, ...p } } } : {};
  });
}

/** A network failure (worth retrying), as opposed to an answer of the server. */
function isNetworkError(e: unknown): boolean {
  return !(e instanceof ApiError) && !(e instanceof DOMException && e.name === 'AbortError');
}

export class Files {
  private aborts = new Map<string, AbortController>();
  /** Decrypted previews by file id (object URLs, revoked at logout). */
  private previews = new Map<string, Promise<string>>();
  private nextLocal = 0;

  constructor(
    private readonly ctx: DriverContext,
    private readonly core: () => Core | undefined,
    private readonly composeFile: (conversation: string, body: FileBodyJson) => Promise<void>,
  ) {}

  /** Encrypts and uploads `file`, then sends the message that carries its key. Progress and
   * errors are in the store's `transfers`; `cancel(id)` stops it and deletes the upload. */
  async send(conversation: string, file: File): Promise<void> {
    const core = this.core();
    if (!core) throw new Error('not signed in');
    const local = `up-${++this.nextLocal}`;
    const abort = new AbortController();
    this.aborts.set(local, abort);
    const mime = file.type || 'application/octet-stream';
    const enc = core.newFileEncryptor(file.size);
    const total = enc.encryptedSize();
    setTransfer(local, {
      id: local,
      kind: 'upload',
      conversation,
      name: file.name,
      done: 0,
      total,
      state: 'running',
    });
    let uploadId: string | undefined;
    try {
      const created = await this.ctx.api.createUpload(
        { conversation, size: total, content_type: mime },
        abort.signal,
      );
      uploadId = created.upload_id;
      const max = Math.max(Math.min(created.max_chunk_bytes || PATCH_BYTES, PATCH_BYTES), 4096);
      let offset = created.offset;
      let retries = 0;
      while (offset < total) {
        const body = await this.ciphertextAt(enc, file, offset, Math.min(max, total - offset));
        try {
          offset = await this.ctx.api.patchUpload(uploadId, offset, body, abort.signal);
          retries = 0;
          patchTransfer(local, { done: offset });
        } catch (e) {
          if (!isNetworkError(e) || ++retries > MAX_RETRIES) {
            if (e instanceof ApiError && e.code === 'offset_mismatch') {
              offset = await this.ctx.api.uploadOffset(uploadId, abort.signal);
              continue;
            }
            throw e;
          }
          await sleep(Math.min(RETRY_BASE_MS * 2 ** retries, 8_000));
          // Whatever reached the disk stays: continue from the server's durable offset.
          offset = await this.ctx.api.uploadOffset(uploadId, abort.signal);
        }
      }
      await this.ctx.api.finishUpload(uploadId, abort.signal);
      const body = enc.fileBody(uploadId, file.name, mime, '');
      await this.composeFile(conversation, body);
      setTransfer(local, undefined);
    } catch (e) {
      const cancelled = abort.signal.aborted;
      if (uploadId) void this.ctx.api.deleteUpload(uploadId).catch(() => undefined);
      if (cancelled) setTransfer(local, undefined);
      else {
        patchTransfer(local, { state: 'failed', error: errorText(e) });
        notify(`${file.name} could not be sent: ${errorText(e)}`);
      }
    } finally {
      enc.free();
      this.aborts.delete(local);
    }
  }

  cancel(id: string): void {
    this.aborts.get(id)?.abort();
    const t = useApp.getState().transfers[id];
    if (t?.state === 'failed') setTransfer(id, undefined);
  }

  /** `len` ciphertext bytes from `offset`: the header, then whole chunks encrypted by index
   * (a resumed upload re-encrypts from the chunk the server's offset falls in). */
  private async ciphertextAt(
    enc: CoreFileEncryptor,
    file: File,
    offset: number,
    len: number,
  ): Promise<Uint8Array> {
    const out = new Uint8Array(len);
    let filled = 0;
    while (filled < len) {
      const at = enc.chunkAt(offset + filled);
      let piece: Uint8Array;
      let start: number;
      if (at === undefined) {
        // Inside the 20-byte header (chunkAt answers undefined there and at the end).
        piece = enc.header();
        start = offset + filled;
        if (start >= piece.length) throw new Error(`offset ${start} is past the file`);
      } else {
        const [index, within] = at;
        const plain = new Uint8Array(
          await file.slice(enc.chunkFileStart(index), enc.chunkFileEnd(index)).arrayBuffer(),
        );
        piece = enc.encryptChunk(index, plain);
        start = within;
      }
      const n = Math.min(piece.length - start, len - filled);
      out.set(piece.subarray(start, start + n), filled);
      filled += n;
    }
    return out;
  }

  /** Downloads and decrypts `body`'s file; resolves to the verified plaintext. */
  async fetchPlain(body: FileBodyJson, progressId?: string): Promise<Blob> {
    const core = this.core();
    if (!core) throw new Error('not signed in');
    const { url } = await this.ctx.api.fileUrl(body.file_id);
    const res = await fetch(url, { credentials: 'omit', cache: 'no-store' });
    if (!res.ok || !res.body) throw new Error(`download failed: HTTP ${res.status}`);
    const dec = core.newFileDecryptor(body);
    const parts: Uint8Array[] = [];
    let done = 0;
    try {
      const reader = res.body.getReader();
      for (;;) {
        const { value, done: end } = await reader.read();
        if (end) break;
        done += value.length;
        const plain = dec.push(value);
        if (plain.length > 0) parts.push(plain);
        if (progressId) patchTransfer(progressId, { done });
      }
      // Throws on truncation or a hash that is not the sender's.
      dec.finish();
    } finally {
      dec.free();
    }
    return new Blob(parts as BlobPart[], { type: body.mime || 'application/octet-stream' });
  }

  /** Downloads, verifies and offers the file to the person under its own name. */
  async download(conversation: string, body: FileBodyJson): Promise<void> {
    const id = `down-${body.file_id}`;
    if (useApp.getState().transfers[id]?.state === 'running') return;
    const core = this.core();
    setTransfer(id, {
      id,
      kind: 'download',
      conversation,
      name: body.name,
      done: 0,
      total: core ? core.fileEncryptedLen(body.size) : body.size,
      state: 'running',
    });
    try {
      const blob = await this.fetchPlain(body, id);
      const href = URL.createObjectURL(blob);
      const a = document.createElement('a');
      a.href = href;
      a.download = body.name || 'file';
      a.rel = 'noopener';
      document.body.append(a);
      a.click();
      a.remove();
      window.setTimeout(() => URL.revokeObjectURL(href), 60_000);
      setTransfer(id, { ...useApp.getState().transfers[id]!, state: 'verified' });
    } catch (e) {
      patchTransfer(id, { state: 'failed', error: errorText(e) });
      notify(`${body.name} could not be downloaded: ${errorText(e)}`);
    }
  }

  /** An object URL of the decrypted image (shared by every row showing it). */
  preview(body: FileBodyJson): Promise<string> {
    let p = this.previews.get(body.file_id);
    if (!p) {
      p = this.fetchPlain(body).then((b) => URL.createObjectURL(b));
      p.catch(() => this.previews.delete(body.file_id));
      this.previews.set(body.file_id, p);
    }
    return p;
  }

  reset(): void {
    for (const a of this.aborts.values()) a.abort();
    this.aborts.clear();
    for (const p of this.previews.values())
      void p.then((u) => URL.revokeObjectURL(u)).catch(() => undefined);
    this.previews.clear();
    useApp.setState({ transfers: {} });
  }
}

export function isPreviewable(body: FileBodyJson): boolean {
  return /^image\/(png|jpeg|gif|webp|avif)$/.test(body.mime) && body.size <= PREVIEW_MAX_BYTES;
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  if (n < 1024 * 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MB`;
  return `${(n / 1024 / 1024 / 1024).toFixed(2)} GB`;
}

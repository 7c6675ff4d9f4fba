// Raw frame transports, the browser's side of clients/sdk/src/transport.rs: WebTransport (one
// bidirectional stream of u32-LE length-prefixed envelopes, datagrams for typing) and secure
// WebSocket (one binary message per envelope). This layer moves opaque frames; the wasm codec
// builds and checks them.

import type { CertificateHash } from './http';
import type { Core } from './wasm';
import { hexToBytes } from './protocol';

export type TransportKind = 'webtransport' | 'websocket';

export interface FrameTransport {
  readonly kind: TransportKind;
  /** Sends one whole frame, in call order. Throws when the transport is closed. */
  send(frame: Uint8Array): Promise<void>;
  /** Unreliable send where datagrams exist (false: not sent, use `send`). */
  sendDatagram(frame: Uint8Array): boolean;
  /** The next frame (stream or datagram); null when the transport closed. */
  recv(): Promise<Uint8Array | null>;
  close(code?: number, reason?: string): void;
  /** Why the transport closed (after `recv` returned null). */
  closeReason(): string;
}

/** How long WebTransport may take to become ready before the WebSocket is used instead: a
 * UDP black hole only fails after QUIC's handshake timeout (seconds), and a person waits. */
export const WEBTRANSPORT_READY_TIMEOUT_MS = 1_500;
/** A WebSocket that does not open within this is treated as failed (offline, server gone). */
export const WEBSOCKET_OPEN_TIMEOUT_MS = 8_000;

/** A bounded FIFO of received frames with one waiting reader. */
class Inbox {
  private frames: Uint8Array[] = [];
  private waiter?: (f: Uint8Array | null) => void;
  private closed = false;
  reason = '';

  push(frame: Uint8Array): void {
    if (this.closed) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w(frame);
    } else {
      this.frames.push(frame);
    }
  }

  end(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.reason = reason;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = undefined;
      w(null);
    }
  }

  next(): Promise<Uint8Array | null> {
    const f = this.frames.shift();
    if (f) return Promise.resolve(f);
    if (this.closed) return Promise.resolve(null);
    return new Promise((resolve) => (this.waiter = resolve));
  }
}

/** The framing of the WebTransport stream comes from tern-wire (through the wasm core). */
export type Framing = Pick<Core, 'newFrameDecoder' | 'lengthPrefixed'>;

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`${what} not ready within ${ms} ms`)), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(t);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}

/** Whether this browser has WebTransport at all (tests can delete it to force the fallback). */
export function webTransportAvailable(): boolean {
  return typeof (globalThis as { WebTransport?: unknown }).WebTransport === 'function';
}

/**
 * WebTransport with the certificate hashes the server publishes, then without them. Chromium
 * refuses QUIC to certificates that chain to a locally installed root (a company or test CA)
 * unless the hash is pinned, and a pin only works for ECDSA certificates valid at most 14 days;
 * a publicly trusted long-lived certificate works without one. Both tries share one deadline.
 */
export async function connectWebTransport(
  url: string,
  hashes: CertificateHash[],
  maxFrameBytes: number,
  framing: Framing,
  readyTimeoutMs = WEBTRANSPORT_READY_TIMEOUT_MS,
): Promise<FrameTransport> {
  if (!webTransportAvailable()) throw new Error('WebTransport is not available in this browser');
  const deadline = Date.now() + readyTimeoutMs;
  const pinned = hashes
    .filter((h) => h.algorithm === 'sha-256')
    .map((h) => ({ algorithm: 'sha-256', value: hexToBytes(h.value) as BufferSource }));
  const attempts: WebTransportOptions[] =
    pinned.length > 0 ? [{ serverCertificateHashes: pinned }, {}] : [{}];
  let lastError: unknown;
  for (const options of attempts) {
    const left = deadline - Date.now();
    if (left <= 0) break;
    const wt = new WebTransport(url, options);
    // Avoid an unhandled rejection if we give up on it before it settles.
    wt.closed.catch(() => undefined);
    try {
      await withTimeout(wt.ready, left, 'WebTransport');
      return await openSession(wt, maxFrameBytes, framing, Math.max(deadline - Date.now(), 500));
    } catch (e) {
      lastError = e;
      try {
        wt.close();
      } catch {
        // already failed
      }
    }
  }
  throw lastError instanceof Error
    ? lastError
    : new Error(`WebTransport failed: ${String(lastError)}`);
}

async function openSession(
  wt: WebTransport,
  maxFrameBytes: number,
  framing: Framing,
  timeoutMs: number,
): Promise<FrameTransport> {
  const stream = await withTimeout(
    wt.createBidirectionalStream(),
    timeoutMs,
    'WebTransport stream',
  );
  const writer = stream.writable.getWriter();
  const reader = stream.readable.getReader();
  const inbox = new Inbox();
  const decoder = framing.newFrameDecoder(maxFrameBytes);
  let open = true;
  const finish = (why: string) => {
    if (open) decoder.free();
    open = false;
    inbox.end(why);
  };

  void (async () => {
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        decoder.push(value);
        for (let f = decoder.next(); f !== undefined; f = decoder.next()) inbox.push(f);
      }
      finish('stream closed by the server');
    } catch (e) {
      finish(`stream error: ${String(e)}`);
    }
  })();
  wt.closed.then(
    (info) => finish(`session closed${info.reason ? `: ${info.reason}` : ''}`),
    (e: unknown) => finish(`connection lost: ${String(e)}`),
  );

  let datagramWriter: WritableStreamDefaultWriter<Uint8Array> | undefined;
  try {
    datagramWriter = wt.datagrams.writable.getWriter();
    const dgReader = wt.datagrams.readable.getReader();
    void (async () => {
      try {
        for (;;) {
          const { value, done } = await dgReader.read();
          if (done) break;
          inbox.push(value);
        }
      } catch {
        // datagrams end with the session
      }
    })();
  } catch {
    datagramWriter = undefined;
  }

  let queue: Promise<void> = Promise.resolve();
  return {
    kind: 'webtransport',
    send(frame) {
      if (!open) return Promise.reject(new Error('transport closed'));
      const next = queue.then(() => writer.write(framing.lengthPrefixed(frame)));
      queue = next.catch(() => undefined);
      return next;
    },
    sendDatagram(frame) {
      if (!open || !datagramWriter) return false;
      if (frame.length > (wt.datagrams.maxDatagramSize ?? 0)) return false;
      datagramWriter.write(frame).catch(() => undefined);
      return true;
    },
    recv: () => inbox.next(),
    close(code = 0, reason = '') {
      open = false;
      try {
        wt.close({ closeCode: code, reason });
      } catch {
        // already closed
      }
      inbox.end('closed locally');
    },
    closeReason: () => inbox.reason,
  };
}

export function connectWebSocket(
  url: string,
  openTimeoutMs = WEBSOCKET_OPEN_TIMEOUT_MS,
): Promise<FrameTransport> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    const inbox = new Inbox();
    let opened = false;
    const timer = setTimeout(() => {
      if (!opened) {
        ws.close();
        reject(new Error(`WebSocket not open within ${openTimeoutMs} ms`));
      }
    }, openTimeoutMs);
    ws.onopen = () => {
      opened = true;
      clearTimeout(timer);
      resolve({
        kind: 'websocket',
        send(frame) {
          if (ws.readyState !== WebSocket.OPEN) {
            return Promise.reject(new Error('transport closed'));
          }
          ws.send(frame as Uint8Array<ArrayBuffer>);
          return Promise.resolve();
        },
        sendDatagram: () => false,
        recv: () => inbox.next(),
        close(code = 1000, reason = '') {
          try {
            ws.close(code, reason);
          } catch {
            ws.close();
          }
          inbox.end('closed locally');
        },
        closeReason: () => inbox.reason,
      });
    };
    ws.onmessage = (ev: MessageEvent<ArrayBuffer | string>) => {
      if (typeof ev.data !== 'string') inbox.push(new Uint8Array(ev.data));
    };
    ws.onerror = () => {
      if (!opened) {
        clearTimeout(timer);
        reject(new Error('WebSocket failed to connect'));
      }
    };
    ws.onclose = (ev) => {
      inbox.end(`WebSocket closed (${ev.code}${ev.reason ? `: ${ev.reason}` : ''})`);
      if (!opened) {
        clearTimeout(timer);
        reject(new Error(`WebSocket closed before opening (${ev.code})`));
      }
    };
  });
}

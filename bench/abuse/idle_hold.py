#!/usr/bin/env python3
"""How many idle TLS connections one address can hold (issue 10, finding 1): opens up to CONNS
from one source address, completing the TLS handshake and sending nothing, then reports how many
are still open after HOLD seconds. Bounded; loopback only.

  python3 bench/abuse/idle_hold.py --port 4433 --pid $(pidof tern) [--conns 300 --hold 5]
"""
import argparse
import socket
import ssl
import time

from common import open_fds, rss_mb, tls_connect


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--source", default="127.0.0.1")
    p.add_argument("--pin", default=None)
    p.add_argument("--conns", type=int, default=300)
    p.add_argument("--hold", type=float, default=5.0)
    args = p.parse_args()
    held, refused = [], 0
    for _ in range(args.conns):
        try:
            s = tls_connect(args.host, args.port, alpn=["http/1.1"], source=args.source, pin=args.pin, timeout=5)
            held.append(s)
        except OSError:
            refused += 1
    time.sleep(args.hold)
    alive = 0
    for s in held:
        s.setblocking(False)
        try:
            data = s.recv(1)
            if data:
                alive += 1
        except (ssl.SSLWantReadError, BlockingIOError, socket.timeout):
            alive += 1
        except OSError:
            pass
    print(f"RESULT attempted={args.conns} handshakes_completed={len(held)} refused={refused} "
          f"still_open_after_{args.hold:.0f}s={alive} server_fds={open_fds(args.pid)} "
          f"rss_mb={rss_mb(args.pid):.1f}")
    for s in held:
        s.close()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Concurrent resumable uploads from ONE process, for bench/run-files.sh.

Why one process started ahead of time: the chat's delivery latency is what the bench measures
beside the uploads, and on a 2-core machine starting 20 curl processes (and the shell work around
them) at the same instant took the cores from the server for most of a second. That stall was the
instrument's, not the server's. This process is started (Python loaded, jobs read, the payload
mapped) before the measured window and waits for one line on stdin; only then does each thread
open its TLS connection and send its PATCHes, as 20 users pressing "send" at once would.

Jobs file: one "TOKEN UPLOAD_ID" line per upload; every upload sends the same payload file in
CHUNK-byte PATCHes (Upload-Offset) on one keep-alive connection, then POSTs finish.
Prints one JSON line: {"t0", "t1", "failed", "bytes"} (t0/t1 in seconds since the epoch; bytes is
0 when stdin's line was not "go", the bench's control run).
"""

import argparse
import http.client
import json
import mmap
import ssl
import sys
import threading
import time


def upload(args, ctx, payload, token, upload_id, start, cancelled, failures, lock):
    start.wait()
    if cancelled.is_set():
        return
    headers = {"Authorization": f"Bearer {token}"}
    path = f"/api/v1/uploads/{upload_id}"
    try:
        conn = http.client.HTTPSConnection(
            args.host, args.port, context=ctx, timeout=600, blocksize=1 << 20
        )
        offset = 0
        view = memoryview(payload)
        while offset < len(payload):
            part = view[offset : offset + args.chunk]
            conn.request(
                "PATCH",
                path,
                body=part,
                headers={
                    **headers,
                    "Upload-Offset": str(offset),
                    "Content-Type": "application/offset+octet-stream",
                },
            )
            response = conn.getresponse()
            response.read()
            if response.status >= 300:
                raise RuntimeError(f"PATCH at {offset}: HTTP {response.status}")
            offset += len(part)
        conn.request("POST", f"{path}/finish", headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status >= 300:
            raise RuntimeError(f"finish: HTTP {response.status}")
        conn.close()
    except Exception as error:  # noqa: BLE001 - every failure is counted and reported
        with lock:
            failures.append(f"{upload_id}: {error}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cacert", required=True)
    parser.add_argument("--file", required=True)
    parser.add_argument("--jobs", required=True)
    parser.add_argument("--chunk", type=int, default=8 * 1024 * 1024)
    args = parser.parse_args()

    ctx = ssl.create_default_context(cafile=args.cacert)
    with open(args.file, "rb") as f:
        payload = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    with open(args.jobs) as f:
        jobs = [line.split() for line in f if line.strip()]

    start, cancelled = threading.Event(), threading.Event()
    failures, lock = [], threading.Lock()
    threads = [
        threading.Thread(
            target=upload,
            args=(args, ctx, payload, token, upload_id, start, cancelled, failures, lock),
        )
        for token, upload_id in jobs
    ]
    for t in threads:
        t.start()
    print("ready", file=sys.stderr, flush=True)
    # The measured window's "go". Any other line or the end of input (run-files.sh's CONTROL=1
    # sends "skip") releases the threads without uploading: the A/A run's processes, no uploads.
    if sys.stdin.readline().strip() != "go":
        cancelled.set()
    t0 = time.time()
    start.set()
    for t in threads:
        t.join()
    t1 = time.time()
    for failure in failures:
        print(f"files-uploader: {failure}", file=sys.stderr)
    sent = 0 if cancelled.is_set() else len(payload) * len(jobs)
    print(json.dumps({"t0": t0, "t1": t1, "failed": len(failures), "bytes": sent}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""How much file uploads slow a small log's fsync on the same file system (issue 13).

    bench/fsync-probe.py MODE [--dir DIR] [--writer-dir DIR] [--seconds 20]

MODE: "none" (the log alone), "writers" (20 writers beside it, 33 MB/s together, as the
server's paced staging writes: 256 KiB writes, sync_file_range every 1 MiB, fdatasync every
8 MiB), "prealloc" (the same with each writer's file preallocated by posix_fallocate),
"direct" (the writers use O_DIRECT: no page cache, so no dirty data for the log's journal
commits to wait for; fdatasync every 8 MiB), "lazy" (no sync_file_range and no fdatasync until
the writer's file is complete). --writer-dir puts the writers' files on another file system;
"metered" (each 256 KiB written is flushed at once and waited for, by at most two writers at a
time: the writers never have more than 512 KiB in the device queue ahead of the log);
--idle gives the writer threads the idle I/O priority class (ioprio_set), which the block
layer's mq-deadline scheduler serves only when no other request waits.
The log appends 4 KB and fdatasyncs every 2 ms, like the store's group commit under chat load;
prints the fdatasync latency's p50/p95/p99/max in ms. The files go to DIR (default: the current
directory) and are removed afterwards.
"""

import argparse
import ctypes
import mmap
import os
import threading
import time

WRITERS = 20
RATE = 33 * 1024 * 1024  # bytes/s for all writers together
CHUNK = 256 * 1024
FILE_BYTES = 100 * 1024 * 1024
SYNC_FILE_RANGE_WRITE = 2
SYS_IOPRIO_SET = 251  # x86_64
IOPRIO_WHO_PROCESS = 1  # with who = 0: the calling thread
IOPRIO_CLASS_IDLE = 3
SYNC_FILE_RANGE_WAIT_BEFORE = 1
SYNC_FILE_RANGE_WAIT_AFTER = 4
METERED = threading.Semaphore(2)

libc = ctypes.CDLL(None, use_errno=True)


def writer(path, mode, idle, stop):
    if idle:
        prio = IOPRIO_CLASS_IDLE << 13
        if libc.syscall(SYS_IOPRIO_SET, IOPRIO_WHO_PROCESS, 0, prio) != 0:
            raise OSError(ctypes.get_errno(), "ioprio_set")
    flags = os.O_CREAT | os.O_WRONLY | os.O_TRUNC
    if mode == "direct":
        flags |= os.O_DIRECT
    fd = os.open(path, flags, 0o600)
    try:
        if mode == "prealloc":
            os.posix_fallocate(fd, 0, FILE_BYTES)
        # O_DIRECT needs an aligned buffer: an anonymous mapping is page-aligned.
        buf = mmap.mmap(-1, CHUNK)
        buf.write(os.urandom(CHUNK))
        per_writer = RATE / WRITERS
        start = time.time()
        written = since_writeback = since_sync = 0
        while not stop.is_set() and written < FILE_BYTES:
            os.pwrite(fd, buf, written)
            written += CHUNK
            since_writeback += CHUNK
            since_sync += CHUNK
            if mode == "metered":
                with METERED:
                    libc.sync_file_range(
                        fd,
                        ctypes.c_int64(written - CHUNK),
                        ctypes.c_int64(CHUNK),
                        SYNC_FILE_RANGE_WAIT_BEFORE
                        | SYNC_FILE_RANGE_WRITE
                        | SYNC_FILE_RANGE_WAIT_AFTER,
                    )
                since_writeback = 0
            if since_writeback >= 1 << 20 and mode in ("writers", "prealloc"):
                libc.sync_file_range(
                    fd,
                    ctypes.c_int64(written - since_writeback),
                    ctypes.c_int64(since_writeback),
                    SYNC_FILE_RANGE_WRITE,
                )
                since_writeback = 0
            if since_sync >= 8 << 20 and mode != "lazy":
                os.fdatasync(fd)
                since_sync = 0
            delay = start + written / per_writer - time.time()
            if delay > 0:
                time.sleep(delay)
        if mode == "lazy":
            os.fdatasync(fd)
    finally:
        os.close(fd)
        os.unlink(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["none", "writers", "prealloc", "direct", "lazy", "metered"])
    ap.add_argument("--dir", default=".")
    ap.add_argument("--writer-dir", default=None)
    ap.add_argument("--idle", action="store_true")
    ap.add_argument("--seconds", type=float, default=20)
    args = ap.parse_args()
    stop = threading.Event()
    threads = []
    if args.mode != "none":
        for i in range(WRITERS):
            path = os.path.join(args.writer_dir or args.dir, f"fsync-probe-writer-{i}")
            t = threading.Thread(target=writer, args=(path, args.mode, args.idle, stop))
            t.start()
            threads.append(t)
    log_path = os.path.join(args.dir, "fsync-probe-log")
    fd = os.open(log_path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
    latencies = []
    end = time.time() + args.seconds
    try:
        while time.time() < end:
            os.write(fd, b"x" * 4000)
            t0 = time.perf_counter()
            os.fdatasync(fd)
            latencies.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.002)
    finally:
        stop.set()
        for t in threads:
            t.join()
        os.close(fd)
        os.unlink(log_path)
    latencies.sort()

    def q(p):
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))]

    print(
        f"{args.mode}{' idle' if args.idle else ''}: n={len(latencies)} p50={q(0.5):.2f} p95={q(0.95):.2f} "
        f"p99={q(0.99):.2f} max={latencies[-1]:.2f} ms"
    )


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""How this machine's disk takes concurrent flushes, as N raft nodes give it.

Each of N threads appends SIZE bytes and fdatasyncs, over and over, for
3 s, in a preallocated file of its own under DIR (default: the current
directory). Prints each thread's flushes per second and their mean
latency. If the disk served flushes one at a time, N threads would each
get 1/N of one thread's rate; the README's "With a replicated certifier"
says what this machine does.

Usage: python3 scripts/fsync-probe.py THREADS SIZE [DIR]
"""
import os
import sys
import threading
import time

SECONDS = 3


def flush_loop(path, size, out, i):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, 256 << 20)
        os.fsync(fd)
        buf, off, n = b"x" * size, 0, 0
        end = time.monotonic() + SECONDS
        while time.monotonic() < end:
            os.pwrite(fd, buf, off)
            os.fdatasync(fd)
            off += size
            n += 1
        out[i] = n
    finally:
        os.close(fd)
        os.unlink(path)


def main():
    threads, size = int(sys.argv[1]), int(sys.argv[2])
    where = sys.argv[3] if len(sys.argv) > 3 else "."
    out = [0] * threads
    ts = [
        threading.Thread(
            target=flush_loop,
            args=(os.path.join(where, f"fsync-probe-{os.getpid()}-{i}"), size, out, i),
        )
        for i in range(threads)
    ]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    rates = [n / SECONDS for n in out]
    print(
        f"{threads} thread(s), {size} B per flush: "
        + ", ".join(f"{r:.0f}/s" for r in rates)
        + f"; mean latency {1000 * threads / sum(rates):.3f} ms"
    )


if __name__ == "__main__":
    main()

"""A stand-in for a guest's disk writes: numbered 4 KiB blocks written one
after another to a volume file (the ``device_path`` os-brick's connector
returned for the attachment), each followed by an fsync, each result in
an append-only journal on local disk.  It runs in a session of its own,
so it outlives a nova-compute killed with its process group, as a QEMU
does.  After a failure it goes on trying (the next block each time), so
the journal shows every write refused after a fence.

    python -m tests.e2e.guest_writer PATH JOURNAL [--first N] [--interval S]
        [--wait-for FILE]

With ``--wait-for`` it opens PATH, then waits for FILE to exist before
its first write: a live migration's destination, whose guest starts at
the switchover.

Block ``k`` lies at offset ``k * 4096``.  Journal lines:
``k t_start t_written t_synced result``, result ``ok`` or ``write:ERRNO``
or ``fsync:ERRNO`` (the errno's name); times from ``time.time()``.  Each
writer starts with a line ``start TIME``: a guest that comes back to a
host it once left (evacuated there again) appends to the same journal,
and its new life is read apart from the old one.
"""

import argparse
import errno
import os
import signal
import struct
import sys
import time

BLOCK = 4096
MAGIC = b'URSAGST1'
_HEAD = struct.Struct('<8sQ')


def block(k):
    """Block ``k``'s content: a header naming it, then a filler that
    differs from block to block."""
    head = _HEAD.pack(MAGIC, k)
    fill = bytes([k % 251 + 1]) * (BLOCK - len(head))
    return head + fill


def numbered(data):
    """The number of the block ``data`` holds, or None when it holds no
    block of a writer (zeros, or anything else)."""
    magic, k = _HEAD.unpack_from(data)
    if magic != MAGIC or data != block(k):
        return None
    return k


class Journal:
    """What the writer did, read back: ``entries`` in order, as
    ``(k, t_start, t_written, t_synced, result)``, of its last life (the
    writer started last on this host); ``lives`` counts them."""

    def __init__(self, path):
        self.entries = []
        self.lives = 0
        if not os.path.exists(path):
            return              # the writer has not started yet
        with open(path) as f:
            for line in f:
                parts = line.split()
                if parts[:1] == ['start']:
                    self.entries = []
                    self.lives += 1
                    continue
                if len(parts) != 5:
                    continue        # the line being written when killed
                k, t0, t1, t2, result = parts
                self.entries.append((int(k), float(t0), float(t1),
                                     float(t2), result))

    def written(self):
        """Blocks whose write was acknowledged."""
        return [e for e in self.entries if not e[4].startswith('write:')]

    def synced(self):
        return [e for e in self.entries if e[4] == 'ok']

    def failed(self):
        return [e for e in self.entries if e[4] != 'ok']


def _errname(e):
    return errno.errorcode.get(e.errno, str(e.errno))


def run(path, journal, first, interval, wait_for=None):
    # Each open, each write and each result straight to the journal's
    # page cache (line-buffered): a SIGKILL of this process loses none.
    out = open(journal, 'a', buffering=1)
    # On a line of its own, even after a writer killed mid-line.
    out.write('\nstart %.6f\n' % time.time())
    fd = None
    k = first
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    if wait_for:
        fd = os.open(path, os.O_RDWR)
        while not stop and not os.path.exists(wait_for):
            time.sleep(0.002)
    while not stop:
        t0 = time.time()
        t1 = t2 = t0
        try:
            if fd is None:
                fd = os.open(path, os.O_RDWR)
            os.pwrite(fd, block(k), k * BLOCK)
            t1 = time.time()
        except OSError as e:
            result = 'write:' + _errname(e)
            if e.errno in (errno.ENOENT, errno.ENOTCONN, errno.EBADF):
                # The file went (the attachment was removed): open it
                # again next time, as a guest's disk would be reopened.
                if fd is not None:
                    os.close(fd)
                fd = None
        else:
            try:
                os.fsync(fd)
                result = 'ok'
            except OSError as e:
                result = 'fsync:' + _errname(e)
            t2 = time.time()
        out.write('%d %.6f %.6f %.6f %s\n' % (k, t0, t1, t2, result))
        k += 1
        time.sleep(interval)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('path')
    p.add_argument('journal')
    p.add_argument('--first', type=int, default=256,
                   help='First block number (default 256: after the first '
                        'MiB, where the image lies).')
    p.add_argument('--wait-for', metavar='FILE',
                   help='Open PATH, then wait for FILE before writing.')
    p.add_argument('--interval', type=float, default=0.02,
                   help='Seconds between two writes.')
    args = p.parse_args(argv)
    return run(args.path, args.journal, args.first, args.interval,
               args.wait_for)


if __name__ == '__main__':
    sys.exit(main())

"""When a chunk server's data directory is failed: ``limit`` disk errors
within ``window`` seconds.

A disk error is an OSError whose errno says the device or its filesystem
failed (EIO, a filesystem remounted read-only, a device gone, a corrupt
filesystem structure, a checksum error of ext4 or XFS metadata), not one
that says it is full (ENOSPC, EDQUOT), that a file is missing, or that a
socket failed.  A failed fdatasync is one error too.  One error
takes a replica out of one chunk (the client or the primary drops it);
``limit`` of them in ``window`` take the whole directory out, because a
disk that fails that often is dying and every read or write it is still
given costs a client a timeout or a retry.  A failed directory stays
failed: only a restart of the chunk server (after the disk is replaced
or checked) clears it.
"""

import collections
import errno
import time

DISK_ERRNOS = frozenset(
    getattr(errno, name) for name in (
        'EIO', 'EROFS', 'ENXIO', 'ENODEV', 'EUCLEAN', 'EBADMSG')
    if hasattr(errno, name))


def is_disk_error(err):
    """Whether ``err`` says the disk (not the request) failed."""
    return isinstance(err, OSError) and err.errno in DISK_ERRNOS


class DiskHealth:
    """Counts disk errors; :meth:`note` says when the directory fails.
    ``limit`` 0: never (errors are still counted and logged)."""

    def __init__(self, limit=5, window=60.0, clock=time.monotonic):
        self.limit = limit
        self.window = window
        self.clock = clock
        self.errors = 0             # since the start
        self.kinds = collections.Counter()  # errno name -> errors
        self.failure = None         # why the directory failed, once it did
        self._recent = collections.deque()

    def fail(self, reason):
        """Fail the directory for ``reason`` (the scrub found too many
        bad blocks); True when it was not failed yet."""
        if self.failure is not None:
            return False
        self.failure = reason
        return True

    def note(self, err):
        """Count ``err`` if it is a disk error; return True when it is the
        one that makes the directory failed (once)."""
        if self.failure is not None or not is_disk_error(err):
            return False
        self.errors += 1
        self.kinds[errno.errorcode.get(err.errno, str(err.errno))] += 1
        now = self.clock()
        self._recent.append(now)
        while self._recent and now - self._recent[0] > self.window:
            self._recent.popleft()
        if self.limit and len(self._recent) >= self.limit:
            self.failure = ('%d disk errors within %g s, the last: %s'
                            % (len(self._recent), self.window, err))
            return True
        return False

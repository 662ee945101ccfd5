"""When a data directory is failed: only disk errors count, only within
the window, and the directory fails once."""

import errno

from cinder_ursa.chunkserver import diskhealth


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def eio():
    return OSError(errno.EIO, 'Input/output error')


def test_the_limit_within_the_window_fails_the_directory_once():
    clock = Clock()
    h = diskhealth.DiskHealth(3, 60.0, clock)
    assert not h.note(eio())
    clock.now += 30
    assert not h.note(eio())
    assert h.failure is None
    clock.now += 29
    assert h.note(eio())
    assert '3 disk errors within 60 s' in h.failure
    assert 'Input/output error' in h.failure
    assert not h.note(eio())     # failed already: said once


def test_errors_older_than_the_window_are_forgotten():
    clock = Clock()
    h = diskhealth.DiskHealth(2, 10.0, clock)
    assert not h.note(eio())
    clock.now += 11
    assert not h.note(eio())
    clock.now += 11
    assert not h.note(eio())
    assert h.failure is None and h.errors == 3


def test_full_missing_and_socket_errors_do_not_count():
    h = diskhealth.DiskHealth(1, 60.0, Clock())
    for err in (OSError(errno.ENOSPC, 'No space left on device'),
                OSError(errno.EDQUOT, 'Disk quota exceeded'),
                FileNotFoundError(errno.ENOENT, 'missing'),
                ConnectionResetError(errno.ECONNRESET, 'reset'),
                ValueError('not an OSError')):
        assert not h.note(err)
    assert h.errors == 0
    assert h.note(OSError(errno.EROFS, 'Read-only file system'))


def test_limit_zero_never_fails():
    h = diskhealth.DiskHealth(0, 60.0, Clock())
    assert not any(h.note(eio()) for _ in range(100))
    assert h.failure is None and h.errors == 100

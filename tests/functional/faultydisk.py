"""A disk that fails on demand: a FUSE passthrough filesystem over a
directory whose reads, writes and syncs return EIO while a trigger file
exists, as a dying disk's would.  Page caching is off (direct_io), so the
errors reach the process using the filesystem.

It also keeps the books a power cut would settle: ``TRIGGER.unsynced``
(JSON, rewritten on every change) lists the files written since their last
fsync and the directories with entries created or renamed since theirs;
that is what a power loss now could lose.  While ``TRIGGER.delay`` holds a
number, every fsync first sleeps that many seconds (a slow disk).

    python -m tests.functional.faultydisk BACKING MOUNTPOINT TRIGGER
"""

import errno
import json
import os
import sys
import threading
import time

import mfusepy


class FaultyDisk(mfusepy.Operations):
    use_ns = True

    def __init__(self, root, trigger):
        self.root = root
        self.trigger = trigger
        self._lock = threading.Lock()
        self._files = set()   # written since their last fsync
        self._dirs = set()    # entries not yet made durable by fsyncdir
        self._report()

    def _path(self, path):
        return os.path.join(self.root, path.lstrip('/'))

    def _check(self):
        if os.path.exists(self.trigger):
            raise mfusepy.FuseOSError(errno.EIO)

    # --- what a power cut would lose -------------------------------------

    def _report(self):
        tmp = self.trigger + '.unsynced.tmp'
        with open(tmp, 'w') as f:
            json.dump({'files': sorted(self._files),
                       'dirs': sorted(self._dirs)}, f)
        os.replace(tmp, self.trigger + '.unsynced')

    def _note(self, files=(), dirs=(), synced_files=(), synced_dirs=()):
        with self._lock:
            before = (len(self._files), len(self._dirs))
            self._files.update(files)
            self._dirs.update(dirs)
            self._files.difference_update(synced_files)
            self._dirs.difference_update(synced_dirs)
            if (len(self._files), len(self._dirs)) != before:
                self._report()

    def _entry(self, path):
        return {'dirs': [os.path.dirname(path) or '/']}

    def _delay(self):
        try:
            with open(self.trigger + '.delay') as f:
                time.sleep(float(f.read().strip() or 0))
        except FileNotFoundError:
            pass

    # --- namespace ------------------------------------------------------

    def getattr(self, path, fh=None):
        st = os.lstat(self._path(path))
        return {k: getattr(st, k) for k in (
            'st_mode', 'st_nlink', 'st_uid', 'st_gid', 'st_size',
            'st_atime_ns', 'st_mtime_ns', 'st_ctime_ns', 'st_blocks')} | {
            'st_atime': st.st_atime_ns, 'st_mtime': st.st_mtime_ns,
            'st_ctime': st.st_ctime_ns}

    def readdir(self, path, fh):
        return ['.', '..'] + os.listdir(self._path(path))

    def mkdir(self, path, mode):
        os.mkdir(self._path(path), mode)
        self._note(**self._entry(path))

    def rmdir(self, path):
        os.rmdir(self._path(path))

    def unlink(self, path):
        os.unlink(self._path(path))
        self._note(synced_files=[path])

    def rename(self, old, new):
        os.rename(self._path(old), self._path(new))
        with self._lock:
            if old in self._files:
                self._files.discard(old)
                self._files.add(new)
        self._note(dirs=[os.path.dirname(old) or '/',
                         os.path.dirname(new) or '/'])

    def chmod(self, path, mode):
        os.chmod(self._path(path), mode)

    def chown(self, path, uid, gid):
        os.chown(self._path(path), uid, gid)

    def utimens(self, path, times=None):
        os.utime(self._path(path), ns=times)

    def statfs(self, path):
        st = os.statvfs(self._path(path))
        return {k: getattr(st, k) for k in (
            'f_bsize', 'f_frsize', 'f_blocks', 'f_bfree', 'f_bavail',
            'f_files', 'f_ffree', 'f_favail', 'f_namemax')}

    # --- files (raw_fi: the real fd is the handle; no page cache) --------

    def create(self, path, mode, fi):
        fi.fh = os.open(self._path(path), fi.flags | os.O_CREAT, mode)
        fi.direct_io = 1
        self._note(**self._entry(path))
        return 0

    def open(self, path, fi):
        fi.fh = os.open(self._path(path), fi.flags & ~os.O_CREAT)
        fi.direct_io = 1
        return 0

    def read(self, path, size, offset, fi):
        self._check()
        return os.pread(fi.fh, size, offset)

    def write(self, path, data, offset, fi):
        self._check()
        n = os.pwrite(fi.fh, data, offset)
        self._note(files=[path])
        return n

    def truncate(self, path, length, fh=None):
        self._check()
        os.truncate(self._path(path), length)
        self._note(files=[path])

    def fallocate(self, path, mode, offset, size, fi):
        self._check()
        res = _fallocate(fi.fh, mode, offset, size)
        self._note(files=[path])
        return res

    def fsync(self, path, datasync, fi):
        self._check()
        self._delay()
        # What is written from here on needs another fsync: take the path
        # off the books before syncing, as the kernel does with its pages.
        self._note(synced_files=[path])
        try:
            os.fdatasync(fi.fh)
        except OSError:
            self._note(files=[path])
            raise
        return 0

    def fsyncdir(self, path, datasync, fh):
        self._check()
        self._delay()
        self._note(synced_dirs=[path])
        fd = os.open(self._path(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return 0

    def flush(self, path, fi):
        return 0

    def release(self, path, fi):
        os.close(fi.fh)
        return 0


def _fallocate(fd, mode, offset, size):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.fallocate(fd, mode, ctypes.c_int64(offset),
                      ctypes.c_int64(size)) != 0:
        raise mfusepy.FuseOSError(ctypes.get_errno())
    return 0


def main():
    backing, mountpoint, trigger = sys.argv[1:4]
    mfusepy.FUSE(FaultyDisk(backing, trigger), mountpoint, foreground=True,
                 raw_fi=True, fsname='faultydisk')


if __name__ == '__main__':
    main()

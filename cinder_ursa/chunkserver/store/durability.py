"""What a FLUSH or a FUA write must make durable: the files written and
the directories given new entries since they were last synced, the sync
itself (in a worker thread, on duplicated fds), and the volumes whose sync
failed on this server."""

import os

from cinder_ursa import exception
from cinder_ursa.chunkserver.store.files import fsync_dir


class DirtyFiles:
    """Part of :class:`~cinder_ursa.chunkserver.store.ChunkStore`."""

    def _is_dirty(self, c):
        files = c.all_files()
        return any(f in d for d in self._dirty.values() for f in files)

    def _new_entry(self, volume, directory):
        """``directory`` has an entry not yet durable (the next sync of
        ``volume`` fsyncs it)."""
        self._dirty_dirs.setdefault(volume, set()).add(directory)

    def _mark_dirty(self, c, files):
        d = self._dirty.get(c.volume)
        if d is None:
            d = self._dirty[c.volume] = set()
        d.update(files)
        self._touched.add((c.volume, c.index))

    def take_dirty(self, volume=None, chunk=None):
        """Take what must be made durable: the files written since they
        were last taken and the directories with new entries, of
        ``volume`` (every volume when None; of ``chunk`` only, when given:
        a FUA write).  Returns ``(fds, dirs)`` for :meth:`sync`: the fds are
        duplicates, so the files may be closed meanwhile.  A volume whose
        sync failed on this server raises DiskError from then on: its data
        here may be lost, and no later FLUSH may say otherwise."""
        vols = ([volume] if volume is not None
                else list(set(self._dirty) | set(self._dirty_dirs)))
        fds, dirs = [], []
        for v in vols:
            if volume is None and v in self._failed:
                continue   # its sync failed; the others still sync
            self.check_failed(v)
            d = self._dirty.get(v)
            if d:
                if chunk is None:
                    taken = self._dirty.pop(v)
                else:
                    taken = d.intersection(chunk.all_files())
                    d -= taken
                for f in taken:
                    if f.data_fd is not None:
                        fds.append((os.dup(f.data_fd), os.dup(f.meta_fd)))
            dirs.extend(self._dirty_dirs.pop(v, ()))
        return fds, dirs

    @staticmethod
    def sync(fds, dirs):
        """fdatasync (and close) what :meth:`take_dirty` took, then fsync
        the directories; runs in a worker thread.  Every fd is closed even
        when a sync fails."""
        err = None
        for data_fd, meta_fd in fds:
            for fd in (data_fd, meta_fd):
                try:
                    if err is None:
                        os.fdatasync(fd)
                except OSError as e:
                    err = e
                finally:
                    os.close(fd)
        if err is not None:
            raise err
        for path in sorted(dirs, key=len, reverse=True):
            try:
                fsync_dir(path)
            except FileNotFoundError:
                pass  # deleted meanwhile: nothing left to keep

    def sync_failed(self, volumes, err):
        """A sync of ``volumes`` (None: all) failed with ``err``."""
        for v in (volumes if volumes is not None else
                  {k[0] for k in self._known}):
            self._failed.setdefault(v, err)

    def failed_volumes(self):
        return list(self._failed)

    def check_failed(self, volume):
        err = self._failed.get(volume)
        if err is not None:
            raise exception.DiskError(
                reason='fdatasync of volume %s failed on this server (%s): '
                       'its replicas here may have lost acknowledged '
                       'writes and serve nothing until it restarts'
                       % (volume, err))

    def sync_everything(self):
        """fdatasync every file and fsync every directory of the chunks
        (after a run that did not stop cleanly); returns the number of
        files synced."""
        n = 0
        for root, _, names in os.walk(self.chunks_dir):
            for name in names:
                try:
                    fd = os.open(os.path.join(root, name),
                                 os.O_RDONLY | getattr(os, 'O_CLOEXEC', 0))
                except FileNotFoundError:
                    continue
                try:
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
                n += 1
            fsync_dir(root)
        return n

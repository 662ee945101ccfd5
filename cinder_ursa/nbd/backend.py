"""What the gateway serves: a :class:`Backend` per export, in nbdkit's
shape (a plugin's callbacks).

The server asks a backend what it can do (``can_*``), derives the
transmission flags from the answers, validates every request against them
and only then calls the data methods.  Data methods raise on failure; the
server turns the exception into an NBD error (``protocol.nbd_error``), so
a backend that cannot do a fast zero raises ``OSError(errno.ENOTSUP)``.
"""

import abc
import errno

from cinder_ursa.client import diff
from cinder_ursa.nbd import protocol as p
from cinder_ursa.protocol import chunkfile

ZERO_PIECE = 4 * 1024 * 1024  # bytes per write of allocated zeros


class Backend(abc.ABC):
    """One open export.  The ``can_*`` defaults say no."""

    name = '?'
    # Bytes of the READs and WRITEs answered (the server counts them, for
    # the per-volume metrics).
    read_bytes = 0
    written_bytes = 0

    @abc.abstractmethod
    def size(self):
        """Bytes in the export (read for every request: it may grow)."""

    @abc.abstractmethod
    async def pread(self, offset, length):
        """The bytes of a range (bytes-like, ``length`` long)."""

    def can_write(self):
        return False

    def can_flush(self):
        return False

    def can_fua(self):
        return False

    def can_trim(self):
        return False

    def can_zero(self):
        return False

    def can_fast_zero(self):
        return False

    def can_multi_conn(self):
        return False

    def can_cache(self):
        return False

    def can_extents(self):
        return False

    def flags(self):
        """The transmission flags of this export."""
        return p.transmission_flags(
            read_only=not self.can_write(), flush=self.can_flush(),
            fua=self.can_fua(), trim=self.can_write() and self.can_trim(),
            zero=self.can_write() and self.can_zero(),
            fast_zero=self.can_fast_zero(),
            multi_conn=self.can_multi_conn(), cache=self.can_cache())

    async def pwrite(self, offset, data, fua):
        raise OSError(errno.EROFS, 'read-only export')

    def pwrite_nowait(self, offset, data, fua, callback):
        """Start a write without a task if that is possible and return
        True, then call ``callback(error)`` (None on success) when it is
        done; return False, having done nothing, for :meth:`pwrite`."""
        return False

    async def zero(self, offset, length, fua, may_trim, fast):
        """Zero a range; ``may_trim``: it may be deallocated; ``fast``:
        fail with ENOTSUP unless that is quicker than writing zeros."""
        raise OSError(errno.EROFS, 'read-only export')

    async def trim(self, offset, length, fua):
        raise OSError(errno.EROFS, 'read-only export')

    async def flush(self):
        """Make completed writes durable (nothing to do by default)."""
        return None

    async def cache(self, offset, length):
        """Prepare to serve a range soon (a hint; nothing by default)."""
        return None

    async def extents(self, offset, length):
        """base:allocation of a range from ``offset``, as [(length,
        STATE_* flags)]; it may describe less than ``length``."""
        return [(length, 0)]

    async def dirty_extents(self, snapshot, offset, length):
        """qemu:dirty-bitmap:<snapshot> of a range from ``offset``, as
        [(length, STATE_DIRTY or 0)]: what changed in the export after
        ``snapshot`` (the master's record)."""
        raise OSError(errno.ENOTSUP, 'this export has no dirty bitmaps')

    async def close(self):
        """The last connection to the export is gone."""
        return None


class VolumeBackend(Backend):
    """An Ursa volume (or a snapshot's read-only view) through the client
    library.  TRIM and WRITE_ZEROES deallocate whole blocks; extents
    report the holes, dirty extents the blocks written since a
    snapshot."""

    def __init__(self, volume, read_only):
        self.volume = volume
        self.read_only = read_only

    @property
    def name(self):
        return self.volume.name

    def size(self):
        return self.volume.size

    def can_write(self):
        return not self.read_only

    def can_flush(self):
        return True

    def can_fua(self):
        return True

    def can_trim(self):
        return True

    def can_zero(self):
        return True

    def can_fast_zero(self):
        return True  # deallocating is fast; NO_HOLE+FAST_ZERO is refused

    def can_multi_conn(self):
        # Every connection to an export shares one Volume (one dirty
        # set), so a FLUSH on any covers writes done on all.
        return True

    def can_cache(self):
        return True

    def can_extents(self):
        return True

    async def pread(self, offset, length):
        return await self.volume.read(offset, length)

    async def pwrite(self, offset, data, fua):
        await self.volume.write(offset, data, fua)

    def pwrite_nowait(self, offset, data, fua, callback):
        return self.volume.write_soon(offset, data, fua, callback)

    async def zero(self, offset, length, fua, may_trim, fast):
        if may_trim:
            await self.volume.write_zeroes(offset, length, fua)
        elif fast:
            # Allocated zeros mean writing them: not fast.
            raise OSError(errno.ENOTSUP, 'allocated zeros are not fast')
        else:
            for pos in range(0, length, ZERO_PIECE):
                n = min(ZERO_PIECE, length - pos)
                await self.volume.write(offset + pos, bytes(n), fua)

    async def trim(self, offset, length, fua):
        await self.volume.write_zeroes(offset, length, fua)

    async def flush(self):
        await self.volume.flush()

    async def cache(self, offset, length):
        await self.volume.prefetch_map(offset, length)

    async def extents(self, offset, length):
        runs = await self.volume.block_status(offset, length)
        return [(n, 0 if st == chunkfile.DATA else
                 p.STATE_HOLE | p.STATE_ZERO) for n, st in runs]

    async def dirty_extents(self, snapshot, offset, length):
        """Blocks written after ``snapshot`` as the export sees them (the
        live volume, or the snapshot exported): InvalidArgument unless
        it is an older snapshot of the same volume."""
        since = diff.since_of(self.volume, snapshot)
        runs = await self.volume.changed_runs(since, offset, length)
        return [(n, p.STATE_DIRTY if changed else 0) for n, changed in runs]

    async def close(self):
        await self.volume.close()

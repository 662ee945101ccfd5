"""``qemu:dirty-bitmap:<snapshot>``: which blocks of an export changed
after one of its volume's snapshots, as QEMU's NBD server exports a dirty
bitmap for an incremental backup (its docs/interop/nbd.txt).

An export offers one such context per snapshot of its volume that is
older than what it serves: every snapshot for the live volume, the older
ones for ``volume@snapshot``.  Bit 0 (NBD_STATE_DIRTY) of a range is set
when the blocks the export serves there were written after that snapshot
(the chunk servers answer from their block metadata:
:meth:`~cinder_ursa.client.volume.Volume.changed_runs`).  The answer errs
only one way: a block rewritten with the bytes it had shows as changed.

A snapshot deleted while a session uses its context ends that context:
its block status requests fail with EINVAL and a message that says so,
noticed within SNAPSHOT_RECHECK seconds (the snapshot's record is asked
for at most that often per session, not at every request: QEMU asks for
one extent per request).
"""

import asyncio
import logging
import time

from cinder_ursa import exception

LOG = logging.getLogger(__name__)

# Seconds a session serves a dirty bitmap before it asks the master again
# whether its snapshot still exists.
SNAPSHOT_RECHECK = 1.0
# Seconds that question waits for the master; past that (a failover) the
# bitmap is served as it was: the snapshot's sequence does not change.
MASTER_WAIT = 2.0


def offered(record, snapshots, snapshot_export):
    """{snapshot name: snapshot}, oldest first: of ``snapshots`` (the
    master's records of the volume's, listed or looked up by name),
    those whose dirty bitmaps an export offers.  ``record`` is the
    master's record of the export: a volume, or a snapshot when
    ``snapshot_export``, which offers only the older ones.  Snapshots
    still being created are not offered."""
    volume_id = record['volume_id'] if snapshot_export else record['id']
    out = {}
    for snap in sorted(snapshots, key=lambda s: s['seq']):
        if snap['volume_id'] != volume_id or snap['status'] != 'available':
            continue
        if snapshot_export and snap['seq'] >= record['seq']:
            continue
        out[snap['name']] = snap
    return out


class DirtyBitmap:
    """A session's ``qemu:dirty-bitmap:<snapshot>``: block status of
    ``backend`` since ``snapshot`` (the master's record, listed in the
    handshake), while the snapshot exists."""

    def __init__(self, master, backend, snapshot, name):
        self.master = master
        self.backend = backend
        self.snapshot = snapshot
        self.name = name
        self._confirmed = time.monotonic()  # listed in the handshake
        self._lock = asyncio.Lock()
        self._gone = None  # why the context ended, once it did

    async def extents(self, offset, length):
        """[(length, STATE_DIRTY or 0)] of a range from ``offset``."""
        await self._confirm()
        return await self.backend.dirty_extents(self.snapshot, offset,
                                                length)

    async def _confirm(self):
        """Raise InvalidArgument once the snapshot is deleted (asked at
        most every SNAPSHOT_RECHECK seconds)."""
        async with self._lock:
            if self._gone is None and \
                    time.monotonic() - self._confirmed >= SNAPSHOT_RECHECK:
                await self._check()
            if self._gone is not None:
                raise exception.InvalidArgument(reason=self._gone)

    async def _check(self):
        snap = self.snapshot
        try:
            now = await asyncio.wait_for(self.master.snapshot(snap['id']),
                                         MASTER_WAIT)
        except exception.NotFound:
            now = None
        except (TimeoutError, exception.NotLeader, exception.Unavailable,
                exception.UrsaConnectionError) as e:
            LOG.warning('NBD %s of %s: no master answered whether snapshot '
                        '%s still exists (%s); served as it was',
                        self.name, self.backend.name, snap['name'],
                        str(e) or 'no answer in %.1f s' % MASTER_WAIT)
            self._confirmed = time.monotonic()
            return
        if now is None or now['status'] != 'available' or \
                now['seq'] != snap['seq']:
            self._gone = (
                'snapshot %s was deleted after this session selected %s; '
                'connect again and select the context of a snapshot that '
                'exists' % (snap['name'], self.name))
            LOG.warning('NBD %s of %s ends: %s', self.name,
                        self.backend.name, self._gone)
            return
        self._confirmed = time.monotonic()

"""What the master's metrics read of the records: the chunks by state
(kept up to date by every change, see store/tally.py: never a scan of
the chunks), the volumes, snapshots, leases and chunk servers.

:func:`cinder_ursa.master.metrics.summarize` classifies what this
returns; the master reads it every few seconds on its database thread,
never at scrape time.
"""

import time

import sqlalchemy as sa

from cinder_ursa.master import models
from cinder_ursa.master.store.common import SHARED


class SummaryRecords:
    """Part of :class:`MetadataStore` (see the package)."""

    def summary_records(self):
        """The records the metrics summarize, read in one transaction:

        ``chunks``: (volume id, replicas, joining copies, the server of a
        chunk's only replica ('' unless it has one), resync mark, chunks,
        lost copies) per distinct combination, so the rows are about one
        per volume and state, whatever the number of chunks;
        ``volumes``: (id, status, size, replicas, min_replicas,
        chunk_size) of every volume; ``snapshots``: {status: count};
        ``leases``: exclusive leases held plus shared ones; ``servers``:
        the chunk server records (the small table)."""
        ct, v = models.chunk_tally, models.volumes
        s, sl = models.snapshots, models.shared_leases
        now = time.time()
        with self.engine.connect() as conn:
            # Kept by every change (store/tally.py): about a row per
            # volume, whatever its number of chunks.
            chunks = [(r.volume_id, r.replicas, r.joining,
                       str(r.only_server) if r.only_server else '',
                       int(bool(r.resync)), r.chunks, r.lost)
                      for r in conn.execute(sa.select(ct))]
            volumes = [tuple(r) for r in conn.execute(sa.select(
                v.c.id, v.c.status, v.c.size, v.c.replicas,
                v.c.min_replicas, v.c.chunk_size))]
            leases = conn.execute(sa.select(sa.func.count()).select_from(
                v).where(v.c.lease_holder.is_not(None),
                         v.c.lease_holder != SHARED,
                         v.c.lease_expires > now)).scalar()
            leases += conn.execute(sa.select(sa.func.count()).select_from(
                sl).where(sl.c.expires > now)).scalar()
            snapshots = dict(conn.execute(sa.select(
                s.c.status, sa.func.count()).group_by(s.c.status)).all())
            servers = [self._server_dict(r) for r in conn.execute(
                sa.select(models.chunkservers))]
        return {'chunks': chunks, 'volumes': volumes, 'leases': leases,
                'snapshots': snapshots, 'servers': servers}

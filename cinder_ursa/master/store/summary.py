"""What the master's metrics read of the records: the chunks counted by
membership in SQL (one scan, grouped, never a row per chunk in Python),
the volumes, snapshots, leases and chunk servers.

:func:`cinder_ursa.master.metrics.summarize` classifies what this
returns; the master reads it every few seconds on its database thread,
never at scrape time.
"""

import time

import sqlalchemy as sa

from cinder_ursa.master import models
from cinder_ursa.master.store.common import SHARED


def id_count(column):
    """The number of server ids in a comma-separated id column, in SQL
    (commas + 1; 0 when empty): length() and replace() mean the same in
    SQLite, MySQL and PostgreSQL."""
    return sa.case(
        (column == '', 0),
        else_=sa.func.length(column) -
        sa.func.length(sa.func.replace(column, ',', '')) + 1)


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
        c, v = models.chunks, models.volumes
        s, sl = models.snapshots, models.shared_leases
        nrep = id_count(c.c.replicas)
        njoin = id_count(c.c.joining)
        only = sa.case((nrep == 1, c.c.replicas), else_='')
        resync = sa.case((c.c.resync, 1), else_=0)
        now = time.time()
        with self.engine.connect() as conn:
            chunks = [tuple(r) for r in conn.execute(sa.select(
                c.c.volume_id, nrep, njoin, only, resync, sa.func.count(),
                sa.func.sum(id_count(c.c.lost))).group_by(
                    c.c.volume_id, nrep, njoin, only, resync))]
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

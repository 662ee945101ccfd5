"""Chunks: the chunk map (allocation and placement), replica drops (the
epoch invariant), and the cluster status built on them."""

import logging

import sqlalchemy as sa

from cinder_ursa import exception
from cinder_ursa.master import models
from cinder_ursa.master import placement
from cinder_ursa.master.store.common import chunk_count
from cinder_ursa.master.store.common import join_ids
from cinder_ursa.master.store.common import split_ids

LOG = logging.getLogger(__name__)


class ChunkRecords:
    """Part of :class:`MetadataStore` (see the package)."""

    def _chunk_dict(self, row, servers):
        ids = split_ids(row.replicas)
        return {'index': row.idx, 'epoch': row.epoch,
                'replicas': [self._public(servers[i]) for i in ids
                             if i in servers]}

    @staticmethod
    def _public(s):
        return {'id': s['id'], 'address': s['address'], 'port': s['port'],
                'state': s['state']}

    def _servers(self, conn):
        t = models.chunkservers
        return {r.id: self._server_dict(r) for r in conn.execute(sa.select(t))}

    def chunk_map(self, ref, start, count, allocate=False):
        """Chunks ``start .. start+count-1`` of a volume.

        With ``allocate`` missing chunks get a replica set (thin volumes
        allocate on first write); without it they are simply absent.
        """
        c = models.chunks
        with self.engine.begin() as conn:
            vol = self._find_volume(conn, ref)
            nchunks = chunk_count(vol)
            if start < 0 or count < 0 or start + count > nchunks:
                raise exception.OutOfRange(
                    reason='chunks %d..%d of volume %s, which has %d'
                    % (start, start + count - 1, vol.name, nchunks))
            # Trashed volumes are still read (through their snapshots).
            if vol.status != 'available' and (allocate or
                                              vol.status != 'trash'):
                raise exception.Conflict(reason='volume %s is %s'
                                         % (vol.name, vol.status))
            rows = {r.idx: r for r in conn.execute(sa.select(c).where(
                c.c.volume_id == vol.id, c.c.idx >= start,
                c.c.idx < start + count))}
            servers = self._servers(conn)
            out = []
            for idx in range(start, start + count):
                row = rows.get(idx)
                if row is None and allocate:
                    ids = placement.choose(list(servers.values()),
                                           vol.replicas, self.failure_domain)
                    if len(ids) < vol.min_replicas:
                        raise exception.InsufficientReplicas(
                            have=len(ids), need=vol.min_replicas,
                            reason='not enough chunk servers up in distinct '
                                   'failure domains (%s) to place chunk %d'
                                   % (self.failure_domain, idx))
                    conn.execute(c.insert().values(
                        volume_id=vol.id, idx=idx, epoch=1,
                        replicas=join_ids(ids)))
                    row = conn.execute(sa.select(c).where(
                        c.c.volume_id == vol.id, c.c.idx == idx)).first()
                if row is not None:
                    out.append(self._chunk_dict(row, servers))
        return {'volume': self._volume_dict(vol), 'chunks': out}

    def drop_replica(self, ref, idx, server_id, epoch):
        """Remove ``server_id`` from a chunk's replica set (epoch + 1).

        Idempotent: when the server is already gone, or the caller's epoch
        is older than the chunk's, the current state is returned unchanged.
        """
        c = models.chunks
        with self.engine.begin() as conn:
            vol = self._find_volume(conn, ref)
            row = conn.execute(sa.select(c).where(
                c.c.volume_id == vol.id, c.c.idx == idx)).first()
            if row is None:
                raise exception.NotFound(kind='chunk', name='%s/%d'
                                         % (vol.name, idx))
            ids = split_ids(row.replicas)
            # The last replica is never dropped: the chunk's data lives
            # nowhere else, so it waits for that server to return.
            if server_id in ids and epoch >= row.epoch and len(ids) > 1:
                ids.remove(server_id)
                conn.execute(c.update().where(
                    c.c.volume_id == vol.id, c.c.idx == idx).values(
                    replicas=join_ids(ids), epoch=row.epoch + 1))
                LOG.warning('Chunk %s/%d: replica on server %d dropped, '
                            'epoch %d, %d replica(s) left', vol.name, idx,
                            server_id, row.epoch + 1, len(ids))
                row = conn.execute(sa.select(c).where(
                    c.c.volume_id == vol.id, c.c.idx == idx)).first()
            chunk = self._chunk_dict(row, self._servers(conn))
        chunk['min_replicas'] = vol.min_replicas
        return chunk

    def cluster_status(self):
        servers = self.list_servers()
        with self.engine.connect() as conn:
            # Summed here, not by SQL: SQLite's SUM raises "integer
            # overflow" past 2**63 - 1, which volumes of up to
            # max_volume_size (8 EiB at most) reach in twos.
            rows = conn.execute(sa.select(
                models.volumes.c.id, models.volumes.c.replicas,
                models.volumes.c.size)).all()
            nvol = len(rows)
            provisioned = sum(r.size for r in rows)
            degraded = 0
            vols = {r.id: r.replicas for r in rows}
            nchunks = 0
            for vid, replicas in conn.execute(sa.select(
                    models.chunks.c.volume_id, models.chunks.c.replicas)):
                nchunks += 1
                if len(split_ids(replicas)) < vols.get(vid, 0):
                    degraded += 1
        up = [s for s in servers if s['state'] == 'up']
        return {
            'servers': {'total': len(servers), 'up': len(up),
                        'down': len(servers) - len(up)},
            'volumes': nvol,
            'chunks': nchunks,
            'degraded_chunks': degraded,
            'capacity_bytes': sum(s['capacity'] for s in up),
            'used_bytes': sum(s['used'] for s in up),
            'free_bytes': sum(s['free'] for s in up),
            'provisioned_bytes': int(provisioned),
            'failure_domain': self.failure_domain,
            'health': ('HEALTH_OK' if servers and not degraded
                       and len(up) == len(servers) else 'HEALTH_WARN'),
        }

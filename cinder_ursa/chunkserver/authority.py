"""What the master says of chunks and leases, as a chunk server needs it.

A chunk server takes a chunk's replica set, its epoch, the volume's
``min_replicas`` and its lease generation from the master, never from a
request: a client (or anything holding the cluster key) that names a
replica set of its own, an epoch or a generation the master never issued
is refused.  Without this, a WRITE naming the primary alone was
acknowledged on one replica while the master reported the cluster healthy,
and one FENCE with generation 2**64-1 made a volume unwritable for good.

The master's answers are cached per chunk and epoch (:class:`ChunkView`).
A request at the cached epoch is checked synchronously; one that names a
newer epoch or generation than this server knows raises
:class:`Unconfirmed` before any side effect, and the server asks the
master (:meth:`Authority.confirm`) and runs it again.  Epochs and
generations only grow, so a request below what is cached is refused at
once, and the cache never needs invalidating.
"""

import logging

from cinder_ursa import exception

LOG = logging.getLogger(__name__)

# Chunk views kept; the oldest is forgotten first (and asked for again
# when needed: one master call).
MAX_VIEWS = 65536


class Unconfirmed(Exception):
    """The request names an epoch or a generation this server must first
    confirm with the master.  Raised before any side effect."""


class ChunkView:
    """A chunk as the master has it: epoch, replica set (server ids,
    primary first), the copies being brought up to date (joining: they
    take the chunk's writes, serve no reads and count for no
    acknowledgement) and the volume's ``min_replicas``."""

    __slots__ = ('epoch', 'replicas', 'joining', 'min_replicas')

    def __init__(self, epoch, replicas, min_replicas, joining=()):
        self.epoch = epoch
        self.replicas = replicas
        self.joining = list(joining)
        self.min_replicas = min_replicas


class Authority:
    """The chunk views and lease generations a chunk server has confirmed
    with the master (``master``: an AsyncMasterClient; ``store``: the
    ChunkStore, which persists generations and stale marks)."""

    def __init__(self, master, store):
        self.master = master
        self.store = store
        self._views = {}

    def learn(self, volume, chunk, min_replicas):
        """Record the master's JSON ``chunk`` (from a chunk map or a
        replica drop) if it is newer than what is known."""
        key = (volume, chunk['index'])
        known = self._views.get(key)
        if known is not None and known.epoch >= chunk['epoch']:
            return
        if known is None and len(self._views) >= MAX_VIEWS:
            del self._views[next(iter(self._views))]
        self._views[key] = ChunkView(
            chunk['epoch'], [r['id'] for r in chunk['replicas']],
            min_replicas, [r['id'] for r in chunk.get('joining', ())])

    def view(self, volume, index, epoch, server_id, confirmed,
             joining=False):
        """The master's view of a chunk a request names at ``epoch``, with
        this server (``server_id``) in its replica set, or among its
        joining copies when ``joining`` (a forwarded write may go to one).
        Raises Unconfirmed when the master must be asked first (unless
        ``confirmed``: it was just asked), StaleEpoch when ``epoch`` is not
        the master's, and StaleReplica (marking the local replica stale)
        when this server left the replica set."""
        if server_id is None:
            raise exception.Unavailable(
                reason='this chunk server has not registered with the '
                       'master yet; retry')
        v = self._views.get((volume, index))
        if v is None or v.epoch < epoch:
            if not confirmed:
                raise Unconfirmed()
            if v is None:
                raise exception.StaleEpoch(
                    reason='chunk %s/%d has no replica set at the master; '
                           'refresh the chunk map' % (volume, index))
            raise exception.StaleEpoch(
                reason='chunk %s/%d: epoch %d was not issued by the master, '
                       'which is at epoch %d; refresh the chunk map'
                       % (volume, index, epoch, v.epoch))
        if epoch < v.epoch:
            raise exception.StaleEpoch(
                reason='chunk %s/%d is at epoch %d, request has %d; refresh '
                       'the chunk map' % (volume, index, v.epoch, epoch))
        if server_id not in v.replicas and not (
                joining and server_id in v.joining):
            self.store.mark_stale(volume, index)
            raise exception.StaleReplica(
                reason='this server (%s) is not in the replica set %s of '
                       'chunk %s/%d at epoch %d; refresh the chunk map' % (
                           server_id, v.replicas, volume, index, epoch))
        return v

    def primary_view(self, volume, index, epoch, server_id, confirmed):
        """:meth:`view`, for a request only the chunk's primary takes
        (REPAIR, REBUILD): StaleEpoch when this server is not it."""
        v = self.view(volume, index, epoch, server_id, confirmed)
        if v.replicas[0] != server_id:
            raise exception.StaleEpoch(
                reason='chunk %s/%d: this server (%d) is not its primary '
                       '(%s); refresh the chunk map' % (
                           volume, index, server_id, v.replicas))
        return v

    def current(self, volume, index):
        """The chunk's view last learned from the master, or None."""
        return self._views.get((volume, index))

    def check_generation(self, volume, generation, confirmed):
        """Refuse a write under a lease generation older than the newest
        the master issued, or one the master never issued."""
        known = self.store.generation(volume)
        if generation == known and generation:
            return
        if generation > known:
            if not confirmed:
                raise Unconfirmed()
            raise exception.Fenced(
                reason='lease generation %d of volume %s was not issued by '
                       'the master, which is at generation %d'
                       % (generation, volume, known))
        self.store.adopt_generation(volume, generation)

    async def confirm(self, volume, index):
        """Ask the master for a chunk (and the volume's lease
        generation)."""
        try:
            reply = await self.master.chunk_map(volume, index, 1)
        except (exception.UrsaConnectionError,
                exception.InternalError) as e:
            raise exception.Unavailable(
                reason='cannot confirm chunk %s/%d with the master (%s); '
                       'retry' % (volume, index, e)) from e
        vol = reply['volume']
        self._adopt(volume, vol['lease']['generation'])
        for chunk in reply['chunks']:
            self.learn(volume, chunk, vol['min_replicas'])

    async def confirm_generation(self, volume, generation):
        """A FENCE announces ``generation``: adopt the master's generation
        if it is at least that, refuse it otherwise."""
        try:
            vol = await self.master.volume(volume)
        except (exception.UrsaConnectionError,
                exception.InternalError) as e:
            raise exception.Unavailable(
                reason='cannot confirm lease generation %d of volume %s '
                       'with the master (%s)' % (generation, volume, e)
            ) from e
        current = vol['lease']['generation']
        if generation > current:
            LOG.warning('Refusing FENCE of volume %s to generation %d: the '
                        'master is at %d', volume, generation, current)
            raise exception.InvalidArgument(
                reason='lease generation %d of volume %s was not issued by '
                       'the master, which is at %d'
                       % (generation, volume, current))
        self._adopt(volume, current)

    def _adopt(self, volume, generation):
        if generation > self.store.generation(volume):
            self.store.adopt_generation(volume, generation)

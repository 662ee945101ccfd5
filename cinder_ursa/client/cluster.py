"""The entry point of the client library: :class:`Cluster`, the typed
master client and one pipelined connection per chunk server, shared by the
volumes it opens; the volume-level calls that go to the master (snapshots,
clones, revert, resize, flatten); reads of replicas on this host."""

import asyncio
import logging
import time

from cinder_ursa import exception
from cinder_ursa.client import master as master_mod
from cinder_ursa.client.volume import Volume
from cinder_ursa.protocol.chunkfile import BLOCK
from cinder_ursa.transport import aio
from cinder_ursa.transport import http

LOG = logging.getLogger(__name__)

# Seconds a chunk server that did not answer in time is read last.
SUSPECT_FOR = 30.0
# Seconds after which the slow servers the master named (in a chunk map
# reply) are asked again, when a read needs them.
SLOW_REFRESH = 10.0


class Cluster:
    """Entry point of the client library (one per event loop)."""

    def __init__(self, master_urls, key, io_timeout=60.0,
                 request_timeout=15.0, local=None, liveness_timeout=3.0,
                 tls=None, principal=None):
        # key: the cluster key, or None for a client without it, which
        # reaches the chunk servers with the tickets the master issues
        # for each volume it opens (protocol/tickets.py) and needs a
        # principal.  tls: the ssl.SSLContext of https:// masters (None:
        # the process default, transport.http.set_default_tls);
        # principal: (name, key) signing the REST requests (None: the
        # process default, set_default_principal).
        self.tickets = key is None
        if self.tickets:
            principal = principal or http.default_principal()
            if principal is None:
                raise exception.InvalidArgument(
                    reason='no cluster key and no principal: set [ursa] '
                           'principal and principal_key_file (a key made '
                           'with "ursa key create"), or cluster_key_file')
            self.key = None
        else:
            self.key = key if isinstance(key, bytes) else key.encode()
        self.master = master_mod.AsyncMasterClient(
            master_urls, self.key, tls=tls, principal=principal)
        self.liveness_timeout = liveness_timeout
        self.pool = (_NoClusterKey() if self.tickets else
                     aio.ConnectionPool(self.key, connect_timeout=5.0,
                                        liveness=liveness_timeout))
        self.io_timeout = io_timeout
        self.request_timeout = request_timeout
        # Short-circuit reads of replicas on this host (an object like
        # cinder_ursa.client.localread.LocalReplicas), or None.
        self.local = local or None
        self._local_bound = None
        self._local_task = None
        self._suspects = {}         # server id -> until when it is read last
        self._suspected = {}        # server id -> when it last failed to
        # The servers whose disk the master judges slow (read last), as
        # its last chunk map reply said, and when (monotonic).
        self.slow = frozenset()
        self._slow_at = float('-inf')
        self._slow_task = None
        # Reads that went to another replica than the primary because
        # the primary is slow (the gateway exports it).
        self.reads_diverted = 0

    @property
    def principal_key(self):
        """The key of the principal this client signs as (tickets are
        issued wrapped with it)."""
        return self.master._http.principal[1]

    def ticket_pool(self, grant):
        """Connections to the chunk servers under ``grant`` (a volume's
        ticket)."""
        return aio.ConnectionPool(None, connect_timeout=5.0,
                                  liveness=self.liveness_timeout,
                                  grant=grant)

    def suspect(self, server_id):
        """``server_id`` did not answer (a timeout, no connection): reads
        try the other replicas first for a while, and a write to a chunk
        it is the primary of fetches the chunk's map again first.  A
        server that hangs (SIGSTOP, a stuck disk) stays in the chunk maps
        this client holds, and without this every read and write of its
        chunks would wait for it again."""
        now = time.monotonic()
        self._suspects[server_id] = now + SUSPECT_FOR
        self._suspected[server_id] = now

    def suspected_at(self, server_id):
        """When ``server_id`` last failed to answer, if it is a suspect."""
        until = self._suspects.get(server_id)
        if until is None or until <= time.monotonic():
            return None
        return self._suspected[server_id]

    def read_order(self, replicas):
        """``replicas`` ((id, host, port), primary first) in the order to
        read them: the slow ones (see :meth:`note_slow`) after the others,
        the suspects last.  Every replica of a chunk map entry may be
        read: a slow one is still read when no other answers."""
        if not self._suspects and not self.slow:
            return replicas
        now = time.monotonic()
        for sid, until in list(self._suspects.items()):
            if until <= now:
                del self._suspects[sid]
        slow = self.slow
        order = sorted(replicas, key=lambda r: (r[0] in self._suspects,
                                                r[0] in slow))
        if order and replicas and replicas[0][0] in slow and \
                order[0][0] not in slow:
            self.reads_diverted += 1
        return order

    def note_slow(self, server_ids):
        """The slow servers a chunk map reply of the master named."""
        self.slow = frozenset(server_ids or ())
        self._slow_at = time.monotonic()

    def refresh_slow(self, volume_id):
        """Ask the master for the slow servers again, in the background,
        when the last answer is older than SLOW_REFRESH (through a chunk
        map call of ``volume_id``, which any reader of it may make): a
        chunk map cached long ago says nothing of a server slow since."""
        if self._slow_task is not None or \
                time.monotonic() - self._slow_at < SLOW_REFRESH:
            return
        self._slow_at = time.monotonic()    # one try per period

        async def ask():
            try:
                reply = await self.master.chunk_map(volume_id, 0, 1)
                self.note_slow(reply.get('slow_servers'))
            except exception.UrsaError as e:
                LOG.debug('Could not refresh the slow servers: %s', e)
        self._slow_task = asyncio.get_running_loop().create_task(ask())
        self._slow_task.add_done_callback(
            lambda _: setattr(self, '_slow_task', None))

    async def local_replicas(self):
        """The local replica reader, bound to the master's server ids.
        Binding it (at first, then every minute: a new chunk server gets a
        new id) runs in the background, and the server list a volume
        opened for writing fetches binds it too (:meth:`note_servers`): a
        read never waits for the master, which may be failing over.
        Until bound, reads go to the chunk servers."""
        now = time.monotonic()
        if self._local_task is None and (
                self._local_bound is None or now - self._local_bound > 60):
            self._local_bound = now
            self._local_task = asyncio.get_running_loop().create_task(
                self._bind_local())
            self._local_task.add_done_callback(
                lambda _: setattr(self, '_local_task', None))
        return self.local

    def note_servers(self, servers):
        """The master's chunk server list, just fetched: binds the local
        replica reader."""
        if self.local:
            self.local.bind(servers)
            self._local_bound = time.monotonic()

    async def _bind_local(self):
        try:
            self.note_servers(await self.master.servers())
        except exception.UrsaError as e:
            LOG.warning('Local reads: cannot list chunk servers: %s', e)

    async def open_volume(self, ref, writable=True, holder=None,
                          force=False, lease_ttl=None, lease='eager'):
        """Open a volume (name or id), or a snapshot (``volume@snapshot``
        or ``snapshot=`` id), which is always read-only.  For writing,
        the lease is taken now (``lease='eager'``), or at the first
        write (``'on-write'``: a live migration's destination, which
        reads meanwhile; see client.volume)."""
        if '@' in ref:
            return await self.open_snapshot(ref)
        if writable and lease == 'on-write' and force:
            raise exception.InvalidArgument(
                reason='force takes the lease at open: not with '
                       'lease=on-write, which asks the holder to hand it '
                       'over at the first write')
        vol = await self.master.volume(ref)
        v = Volume(self, vol, writable, lease=lease)
        if writable and lease == 'eager':
            await v._acquire(holder, force, lease_ttl)
            return v
        if writable:
            v._prepare_on_write(holder, lease_ttl)
        if self.tickets:
            await v._read_ticket()
        return v

    async def open_snapshot(self, ref):
        v = Volume.for_snapshot(self, await self.master.snapshot(ref))
        if self.tickets:
            await v._read_ticket()
        return v

    async def create_snapshot(self, volume, name):
        return await self.master.create_snapshot(volume, name)

    async def delete_snapshot(self, ref):
        await self.master.delete_snapshot(ref)

    async def clone(self, snapshot, name, size=None, **kwargs):
        return await self.master.clone(snapshot, name, size, **kwargs)

    async def revert(self, volume, snapshot):
        return await self.master.revert(volume, snapshot)

    async def resize(self, volume, size, force=False):
        """Grow a volume, or shrink it with ``force``: the range cut off is
        zeroed first, so growing it again later shows zeros."""
        info = await self.master.volume(volume)
        if size < info['size'] and force:
            v = await self.open_volume(info['id'], writable=True)
            try:
                end = -(-size // BLOCK) * BLOCK
                await v.write_zeroes(end, info['size'] - end)
                if size % BLOCK:
                    await v.write_zeroes(size, end - size)
            finally:
                await v.close()
        return await self.master.resize(info['id'], size, bool(force))

    async def flatten(self, volume, progress=None, rate=None):
        """Copy every block a clone still reads from its parent into the
        clone, then detach it.  Safe while the clone is open and written
        (copy-ups only fill blocks the clone never wrote); resumable (a
        restart skips what was copied).  ``rate``: bytes/s limit."""
        v = await self.open_volume(volume, writable=False)
        try:
            if v.parent is None and v.info.get('parent') is None:
                raise exception.InvalidArgument(
                    reason='volume %s is not a clone' % v.name)
            if self.tickets:
                await v._read_ticket(copy_up=True)
            await v._flatten(progress, rate)
        finally:
            await v.close()
        return await self.master.detach_parent(v.id)

    async def close(self):
        if self._local_task is not None:
            self._local_task.cancel()
        self.pool.close()
        await self.master.close()


class _NoClusterKey:
    """The pool of a client without the cluster key: it reaches chunk
    servers only through the volumes it opens (their tickets)."""

    def _refuse(self, *args, **kwargs):
        raise exception.NotAuthorized(
            reason='this client has no cluster key: it reaches the chunk '
                   'servers only for the volumes it opens, with their '
                   'tickets; run cluster-wide tools with the cluster key')

    get = connected = _refuse

    def discard(self, *args):
        pass

    def close(self):
        pass

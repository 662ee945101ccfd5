"""Flush rounds: FLUSH sent to every chunk server a volume wrote to (or,
at a writable volume's first flush and on multiattach volumes, every
server up), concurrent rounds awaited together, and a server that cannot
flush dropped from the replica sets of the chunks it holds."""

import asyncio
import logging
import time

from cinder_ursa import exception
from cinder_ursa.protocol import codec

LOG = logging.getLogger(__name__)


class FlushRounds:
    """Part of :class:`~cinder_ursa.client.volume.Volume`."""

    async def _flush(self):
        """Make every acknowledged write durable on every current replica:
        the writes of this Volume, and, at the first flush of a writable
        one, those of earlier holders that never flushed (a gateway, agent
        or client that died); on a multiattach volume, at every flush,
        those of the other writers.  Waits for the flushes already running,
        which took writes acknowledged before this call.

        A replica that cannot flush is dropped from the replica sets of the
        chunks concerned; the flush then succeeds only if enough replicas
        of each remain.  (Volume.flush first waits for a handover of the
        lease that is running: see Volume.hand_over.)
        """
        self._check_open(False)
        # A multiattach volume has other writers: like a shared disk's
        # cache flush, every flush covers their acknowledged writes too.
        if self._inherited or (self.writable and self.info.get(
                'multiattach')):
            # The servers up when the lease was taken, for the first flush
            # (see Volume._acquire), else the master is asked.
            servers = self._inherited if isinstance(
                self._inherited, list) else self._servers_up(
                    await self.cluster.master.servers())
            self._inherited = False
            for addr in servers:
                self._dirty[addr] = None
        dirty, self._dirty = self._dirty, {}
        rounds = list(self._flushes)
        if dirty:
            task = asyncio.ensure_future(self._flush_round(dirty))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)
            rounds.append(task)
        if rounds:
            # asyncio.wait: a cancelled caller leaves the rounds that other
            # flushes wait for running.
            await asyncio.wait(rounds)
            for r in rounds:
                if r.exception() is not None:
                    raise r.exception()

    @staticmethod
    def _servers_up(servers):
        """(address, port) of every chunk server up in the master's
        ``servers``."""
        return [(s['address'], s['port']) for s in servers
                if s['state'] == 'up']

    async def _flush_round(self, dirty):
        results = await asyncio.gather(*(
            self._flush_server(addr, chunks)
            for addr, chunks in dirty.items()), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r

    async def _flush_server(self, addr, chunks):
        """FLUSH the volume on one chunk server; ``chunks`` ({index: server
        id}, None: any chunk it holds) are what it must drop if it fails.
        When they cannot be dropped either, the next flush tries again.
        A server that refuses this writer (NotAuthorized, Fenced) did not
        fail: nothing is dropped, the flush fails.

        A multiattach writer whose ticket was revoked with its generation
        (NotAuthorized) asks the master whether it was re-admitted at a
        newer one, and flushes again with its ticket (see
        Volume._readmit); that is no failure of the server's."""
        deadline = time.monotonic() + self.cluster.io_timeout
        while True:
            generation = self.generation
            try:
                conn = await self.pool.get(*addr)
                reply = await conn.call(codec.encode_flush, self.id,
                                        timeout=self.cluster.request_timeout)
                codec.reply_status(reply.body)
                return
            except exception.UrsaError as e:
                if not self._may_readmit(e):
                    err = e
                    break
                # (Raises, and drops nothing, if not re-admitted.)
                await self._readmit(generation, e, deadline)
        if isinstance(err, (exception.NotAuthorized, exception.Fenced)):
            # Refused, not failed: this writer is fenced (its ticket
            # revoked with its generation), or not let in.  The server
            # is fine, and dropping it would take a healthy replica from
            # the writers that replaced this one.  Still to flush.
            pending = self._dirty.get(addr, {})
            if pending is not None:
                if chunks is None:
                    self._dirty[addr] = None
                else:
                    pending.update(chunks)
                    self._dirty[addr] = pending
            raise err
        self.pool.discard(*addr)
        LOG.warning('Volume %s: flush on %s:%d failed (%s); dropping '
                    'that replica', self.name, addr[0], addr[1], err)
        try:
            if chunks is None:
                chunks = await self._chunks_on(addr)
        except exception.UrsaError:
            self._dirty[addr] = None
            raise
        short, undropped, failed = None, {}, None
        for index, sid in chunks.items():
            try:
                chunk = await self._drop_failed(index, sid)
            except exception.UrsaError as e:
                undropped[index] = sid
                failed = failed or e
                continue
            self._forget(index)
            if chunk is not None and (len(chunk['replicas'])
                                      < chunk['min_replicas']):
                short = short or exception.InsufficientReplicas(
                    have=len(chunk['replicas']), need=chunk['min_replicas'],
                    reason='flush of chunk %d of volume %s' % (
                        index, self.name))
        if undropped:
            # Still a replica, and not durable: the next flush tries again.
            pending = self._dirty.get(addr, {})
            if pending is not None:
                pending.update(undropped)
                self._dirty[addr] = pending
            raise failed
        if short is not None:
            raise short from err

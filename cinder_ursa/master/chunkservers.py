"""The master's side of the data protocol: the requests it sends to chunk
servers (FENCE, DELETE, SNAPSHOT, REVERT, REBUILD, RESYNC) and who did not
answer.

Under leader election every connection first claims the leader's term
(TERM): a chunk server that has seen a newer term refuses that
connection's requests, so a deposed leader that has not noticed yet (it
was paused, or its clock check raced the election) changes nothing on
the chunk servers, as its database writes change nothing there.

A master without election claims a term too, the one the chunk server
follows (0 where no master was ever elected): the commands that change
or destroy data (DELETE, SNAPSHOT, REVERT, REBUILD) are taken only on a
connection that claimed a term, which a client's connection never does.
"""

import asyncio
import logging
import weakref

from cinder_ursa import exception
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import control
from cinder_ursa.transport import aio

LOG = logging.getLogger(__name__)


class ChunkServers:
    """Pipelined connections to the chunk servers, with the cluster key.

    ``guard()`` raises NotLeader while this master may not command (a
    standby); ``deposed(error, newer)`` is called when a chunk server
    refuses the term this master leads with (``newer``: the term it has
    seen, when it said).
    """

    def __init__(self, key, guard=None, deposed=None):
        self.pool = aio.ConnectionPool(key, connect_timeout=3.0)
        self.guard = guard or (lambda: None)
        self.deposed = deposed or (lambda error, newer=None: None)
        self.term = None            # claimed on each connection, if any
        self._claimed = weakref.WeakSet()

    def new_term(self, term):
        """This master leads with ``term`` from now on (None: it leads no
        more, or leads without election): connections opened before are
        closed, as they claimed another term."""
        self.term = term
        self.pool.close()
        self._claimed = weakref.WeakSet()

    async def connect(self, server, timeout=5.0):
        """The connection to ``server`` (a dict with its address and
        port), its term claimed."""
        self.guard()
        addr = (server['address'], server['port'])
        conn = await self.pool.get(*addr)
        term = self.term
        if conn not in self._claimed:
            reply = await conn.call(control.encode_term, term or 0,
                                    timeout=timeout)
            try:
                newest = control.decode_count_ok(reply.body)
                if term is None and newest:
                    # No election: this master is the only one, and
                    # takes the term the chunk server follows (it never
                    # raises it).
                    reply = await conn.call(control.encode_term, newest,
                                            timeout=timeout)
                    newest = control.decode_count_ok(reply.body)
            except exception.NotLeader as e:
                self.pool.discard(*addr)
                self.deposed(e)
                raise
            except exception.ProtocolError as e:
                # A chunk server of a version before TERM (it closed the
                # connection): commanded unfenced until it is upgraded
                # (its next connection claims the term again).
                LOG.warning('Chunk server %s:%d does not know TERM (%s): '
                            'upgrade it, until then it cannot refuse a '
                            'deposed master', *addr, e)
                self.pool.discard(*addr)
                conn = await self.pool.get(*addr)
            else:
                if term is not None and newest > term:
                    self.pool.discard(*addr)
                    e = exception.NotLeader(
                        reason='chunk server %s:%d follows term %d, this '
                               'master leads with %d' % (*addr, newest, term))
                    self.deposed(e, newest)
                    raise e
            if self.term == term:
                self._claimed.add(conn)
        return conn

    async def broadcast(self, servers, make_frame, timeout=5.0):
        """Send ``make_frame(request id)`` to each server (dicts from the
        store) and wait for every answer; return the ids of those that
        failed or did not answer within ``timeout``.  NotLeader (this
        master was deposed) is raised, not counted as a server's
        failure."""
        async def one(s):
            try:
                await self.send(s, make_frame, timeout)
                return None
            except exception.NotLeader:
                raise
            except exception.UrsaError as e:
                self.pool.discard(s['address'], s['port'])
                LOG.warning('Chunk server %d (%s:%d): %s', s['id'],
                            s['address'], s['port'], e)
                return s['id']
        results = await asyncio.gather(*(one(s) for s in servers))
        return [r for r in results if r is not None]

    async def send(self, server, make_frame, timeout=5.0):
        """Send ``make_frame(request id)`` to one server (a dict with its
        address and port) and return the reply; its error is raised."""
        try:
            conn = await self.connect(server, timeout)
            reply = await conn.call(make_frame, timeout=timeout)
            try:
                codec.reply_status(reply.body)
            except exception.NotLeader as e:
                # A newer leader announced itself after our TERM.
                self.pool.discard(server['address'], server['port'])
                self.deposed(e)
                raise
            return reply
        except exception.UrsaConnectionError:
            self.pool.discard(server['address'], server['port'])
            raise

    def close(self):
        self.pool.close()

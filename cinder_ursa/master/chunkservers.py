"""The master's side of the data protocol: the requests it broadcasts to
chunk servers (FENCE, DELETE, SNAPSHOT, REVERT) and who did not answer."""

import asyncio
import logging

from cinder_ursa import exception
from cinder_ursa.protocol import codec
from cinder_ursa.transport import aio

LOG = logging.getLogger(__name__)


class ChunkServers:
    """Pipelined connections to the chunk servers, with the cluster key."""

    def __init__(self, key):
        self.pool = aio.ConnectionPool(key, connect_timeout=3.0)

    async def broadcast(self, servers, make_frame, timeout=5.0):
        """Send ``make_frame(request id)`` to each server (dicts from the
        store) and wait for every answer; return the ids of those that
        failed or did not answer within ``timeout``."""
        async def one(s):
            try:
                await self.send(s, make_frame, timeout)
                return None
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
            conn = await self.pool.get(server['address'], server['port'])
            reply = await conn.call(make_frame, timeout=timeout)
            codec.reply_status(reply.body)
            return reply
        except exception.UrsaConnectionError:
            self.pool.discard(server['address'], server['port'])
            raise

    def close(self):
        self.pool.close()

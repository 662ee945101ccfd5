"""A chunk server holding millions of replicas registers: the master
accepts a registration of up to [ursa_master] registration_max_body
(256 MiB, some 25 million replicas as "held"), and the chunk server
must be able to wait for its answer."""

import asyncio
import time

import pytest
from aiohttp import test_utils

from cinder_ursa.chunkserver import controlplane
from cinder_ursa.chunkserver import server as server_mod
from cinder_ursa.master import api
from cinder_ursa.master import models
from cinder_ursa.master import store as store_mod

pytestmark = pytest.mark.timeout(600)

KEY = b'k' * 32
MiB = 1024 * 1024
# Far below what registration_max_body lets a server send (15 MiB of
# its 256 as "held").
REPLICAS = 2000000


def test_a_server_holding_two_million_replicas_registers(tmp_path):
    store = store_mod.MetadataStore('sqlite:///%s' % (tmp_path / 'm.sqlite'))
    store.upgrade()
    sid = store.register_server('big', 'h', 'r', '127.0.0.1', 9000,
                                2 ** 50, 0, 2 ** 50)[0]['id']
    vid = store.create_volume('v', REPLICAS * 4 * MiB, replicas=1,
                              min_replicas=1, chunk_size=4 * MiB)['id']
    with store.engine.begin() as conn:
        for at in range(0, REPLICAS, 100000):
            conn.execute(models.chunks.insert(), [
                {'volume_id': vid, 'idx': i, 'epoch': 1,
                 'replicas': str(sid), 'joining': '', 'lost': '',
                 'resync': False} for i in range(at, at + 100000)])
    fields = controlplane.held_fields([(vid, i, 1) for i in range(REPLICAS)])
    assert set(fields) == {'held'}

    async def go():
        master = api.MasterAPI(store, KEY)
        async with test_utils.TestServer(master.app()) as web:
            # The master client a chunk server registers with, as it
            # makes it (its timeout included).
            cs = server_mod.ChunkServer(
                str(tmp_path / 'cs'), KEY, [str(web.make_url(''))])
            try:
                started = time.monotonic()
                reply = await cs.master.register_server(
                    uuid='big', host='h', rack='r', address='127.0.0.1',
                    port=9000, capacity=2 ** 50, used=0, free=2 ** 50,
                    **fields)
                return reply, time.monotonic() - started
            finally:
                await cs.master.close()
    reply, took = asyncio.run(go())
    assert reply['reported'] == REPLICAS, took
    assert reply['stale'] == [] and reply['orphans'] == []
    store.close()

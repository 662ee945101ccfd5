"""A chunk server that did not answer in time is read last for a while,
and a write to a chunk it is the primary of fetches the map again."""

import asyncio

from cinder_ursa.client import chunkmap
from cinder_ursa.client import cluster as cluster_mod


def test_suspects_are_read_last_until_they_expire(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(cluster_mod.time, 'monotonic', lambda: now[0])
    cl = cluster_mod.Cluster(['http://127.0.0.1:1'], b'k' * 32)
    replicas = [(1, 'h', 1), (2, 'h', 2), (3, 'h', 3)]
    assert cl.read_order(replicas) == replicas
    cl.suspect(1)
    assert cl.read_order(replicas) == [(2, 'h', 2), (3, 'h', 3), (1, 'h', 1)]
    cl.suspect(3)
    assert cl.read_order(replicas) == [(2, 'h', 2), (1, 'h', 1), (3, 'h', 3)]
    now[0] += cluster_mod.SUSPECT_FOR + 1
    assert cl.read_order(replicas) == replicas


def test_a_write_to_a_suspect_primary_fetches_the_map_again_once(
        monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(cluster_mod.time, 'monotonic', lambda: now[0])
    monkeypatch.setattr(chunkmap.time, 'monotonic', lambda: now[0])
    cl = cluster_mod.Cluster(['http://127.0.0.1:1'], b'k' * 32)
    maps = [[(1, 'h', 1), (2, 'h', 2)], [(2, 'h', 2)]]
    fetched = []

    class Master:
        async def chunk_map(self, vol, start, count, allocate):
            fetched.append(start)
            return {'chunks': [{'index': start, 'epoch': len(fetched),
                                'replicas': [
                                    {'id': i, 'address': h, 'port': p}
                                    for i, h, p in maps[0]]}]}
    cl.master = Master()

    class Vol(chunkmap.ChunkMap):
        id = 'v'
        writable = True
        cluster = cl

        def __init__(self):
            self._map, self._map_at, self._map_locks = {}, {}, {}

    vol = Vol()

    def write_map():
        return asyncio.run(vol._write_map(0))
    assert write_map().replicas[0][0] == 1 and fetched == [0]
    assert write_map().epoch == 1 and fetched == [0]     # cached
    now[0] += 1
    cl.suspect(1)
    maps.pop(0)                                          # the master dropped 1
    now[0] += 1
    assert write_map().replicas[0][0] == 2 and fetched == [0, 0]
    assert write_map().epoch == 2 and fetched == [0, 0]  # once


def test_slow_servers_are_read_after_the_others(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(cluster_mod.time, 'monotonic', lambda: now[0])
    cl = cluster_mod.Cluster(['http://127.0.0.1:1'], b'k' * 32)
    replicas = [(1, 'h', 1), (2, 'h', 2), (3, 'h', 3)]
    cl.note_slow([1])
    assert cl.read_order(replicas) == [(2, 'h', 2), (3, 'h', 3), (1, 'h', 1)]
    assert cl.reads_diverted == 1
    # A slow replica that is not the primary changes nothing.
    assert cl.read_order([(2, 'h', 2), (1, 'h', 1)]) == [
        (2, 'h', 2), (1, 'h', 1)]
    assert cl.reads_diverted == 1
    # The only replica is read, slow or not.
    assert cl.read_order([(1, 'h', 1)]) == [(1, 'h', 1)]
    assert cl.reads_diverted == 1
    # A suspect comes after a slow server.
    cl.suspect(2)
    assert cl.read_order(replicas) == [(3, 'h', 3), (1, 'h', 1), (2, 'h', 2)]
    cl.note_slow([])
    cl._suspects.clear()
    assert cl.read_order(replicas) == replicas


def test_the_slow_servers_are_asked_again_after_a_while(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(cluster_mod.time, 'monotonic', lambda: now[0])
    cl = cluster_mod.Cluster(['http://127.0.0.1:1'], b'k' * 32)
    asked = []

    class Master:
        async def chunk_map(self, vol, start, count, allocate=False):
            asked.append(vol)
            return {'chunks': [], 'slow_servers': [7]}
    cl.master = Master()

    async def run():
        cl.note_slow([])
        cl.refresh_slow('v')
        await asyncio.sleep(0)
        assert asked == []
        now[0] += cluster_mod.SLOW_REFRESH
        cl.refresh_slow('v')
        cl.refresh_slow('v')
        for _ in range(3):
            await asyncio.sleep(0)
        assert asked == ['v']
        assert cl.slow == {7}
    asyncio.run(run())

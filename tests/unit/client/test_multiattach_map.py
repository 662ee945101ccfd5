"""A multiattach volume's writer is not its only writer: a chunk it found
unallocated may be allocated and written by a writer on another host at
any time, so it must not cache it as a hole (which reads as zeros without
asking anyone).  The fakes of test_readmission.py."""



from tests.unit.client.test_readmission import BS
from tests.unit.client.test_readmission import FakeMaster
from tests.unit.client.test_readmission import FakeServer
from tests.unit.client.test_readmission import block
from tests.unit.client.test_readmission import open_volume


class LaterMaster(FakeMaster):
    """Chunk 0 is allocated once ``allocated`` is set (another host's
    writer wrote it)."""

    allocated = False

    async def chunk_map(self, vid, start, count, allocate=False):
        reply = await super().chunk_map(vid, start, count, allocate)
        if not (self.allocated or allocate):
            reply['chunks'] = [c for c in reply['chunks']
                               if c['index'] != 0]
        return reply


def test_a_shared_writer_caches_no_hole(run):
    master, server = LaterMaster(), FakeServer()
    vol = open_volume(run, master, server)
    assert run(vol.read(0, BS)) == bytes(BS)
    # Another host's writer allocates chunk 0 and writes block 0.
    master.allocated = True
    server.blocks[0] = block(9)
    assert run(vol.read(0, BS)) == block(9)
    run(vol.close())


def test_an_exclusive_writer_still_caches_holes(run):
    master, server = LaterMaster(multiattach=False), FakeServer()
    vol = open_volume(run, master, server)
    assert run(vol.read(0, BS)) == bytes(BS)
    asked = len(server.log)
    assert run(vol.read(0, BS)) == bytes(BS)
    assert 0 in vol._map and vol._map[0] is None
    assert len(server.log) == asked
    run(vol.close())

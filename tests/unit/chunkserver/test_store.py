"""Chunk replicas on disk: checksums, epochs, generations, layout."""

import os
import struct

import pytest

from cinder_ursa import exception
from cinder_ursa.chunkserver import store as store_mod
from cinder_ursa.common import checksum

VOL = '11111111-2222-3333-4444-555555555555'


@pytest.fixture
def st(tmp_path):
    s = store_mod.ChunkStore(str(tmp_path))
    yield s
    s.close()


def test_unwritten_ranges_read_as_zeros(st):
    assert st.read(None, 0, 100) == bytes(100)
    c = st.check_epoch(VOL, 0, 1, create=True)
    st.write(c, 8192, b'x' * 4096)
    assert st.read(c, 0, 4096) == bytes(4096)
    assert st.read(c, 1 << 20, 10) == bytes(10)


def test_unaligned_writes_merge_with_existing_blocks(st):
    c = st.check_epoch(VOL, 0, 1, create=True)
    model = bytearray(5 * 4096)
    for off, data in ((100, b'a' * 5000), (4095, b'b' * 2), (3 * 4096 - 7,
                                                             b'c' * 9000)):
        st.write(c, off, data)
        model[off:off + len(data)] = data
    assert st.read(c, 0, len(model)) == bytes(model)
    assert st.read(c, 4094, 5) == bytes(model[4094:4099])


def test_every_block_has_a_crc32c(st, tmp_path):
    c = st.check_epoch(VOL, 3, 1, create=True)
    data = os.urandom(3 * 4096)
    st.write(c, 4096, data)
    raw = open(tmp_path / 'chunks' / VOL / '3.crc', 'rb').read()
    stored = struct.unpack('!4I', raw[:16])
    assert stored[0] == 0  # never written
    assert list(stored[1:]) == checksum.block_crcs(data)


def test_corruption_is_detected_on_read(st, tmp_path):
    c = st.check_epoch(VOL, 0, 1, create=True)
    st.write(c, 0, os.urandom(8192))
    path = tmp_path / 'chunks' / VOL / '0.data'
    with open(path, 'r+b') as f:
        f.seek(5000)
        f.write(b'\xff')
    assert len(st.read(c, 0, 4096)) == 4096  # block 0 is fine
    with pytest.raises(exception.ChecksumError, match='block 1'):
        st.read(c, 4096, 10)
    # A partial write touching the bad block refuses to bake it in.
    with pytest.raises(exception.ChecksumError):
        st.write(c, 4100, b'z')


def test_epochs_and_stale_replicas(st):
    c = st.check_epoch(VOL, 0, 2, create=True)
    assert c.epoch == 2
    with pytest.raises(exception.StaleEpoch):
        st.check_epoch(VOL, 0, 1)
    assert st.check_epoch(VOL, 0, 5).epoch == 5
    st.mark_stale(VOL, 0)
    with pytest.raises(exception.StaleReplica):
        st.check_epoch(VOL, 0, 9)


def test_generations_fence_older_writers(st):
    st.adopt_generation(VOL, 3)
    st.adopt_generation(VOL, 3)
    with pytest.raises(exception.Fenced):
        st.adopt_generation(VOL, 2)


def test_state_survives_a_restart(tmp_path):
    s = store_mod.ChunkStore(str(tmp_path))
    ident = s.server_uuid
    c = s.check_epoch(VOL, 7, 4, create=True)
    s.write(c, 0, b'q' * 4096)
    s.adopt_generation(VOL, 9)
    s.sync_fds(s.dirty_fds())
    s.close()
    s = store_mod.ChunkStore(str(tmp_path))
    assert s.server_uuid == ident
    assert s.chunk_list() == [(VOL, 7, 4)]
    assert s.generation(VOL) == 9
    assert s.read(s.check_epoch(VOL, 7, 4), 0, 4) == b'qqqq'
    epoch, allocated, crcs = s.chunk_info(VOL, 7)
    assert epoch == 4 and allocated >= 4096 and len(crcs) == 1
    assert s.delete(VOL) == 1
    assert s.chunk_list() == []
    assert not (tmp_path / 'chunks' / VOL).exists()


def test_ranges_outside_a_chunk_are_refused(st):
    c = st.check_epoch(VOL, 0, 1, create=True)
    with pytest.raises(exception.OutOfRange):
        st.write(c, store_mod.MAX_CHUNK - 1, b'ab')
    with pytest.raises(exception.OutOfRange):
        st.read(c, -1, 1)


def test_no_space_is_a_clear_error(tmp_path):
    s = store_mod.ChunkStore(str(tmp_path), reserved_bytes=1 << 62)
    c = s.check_epoch(VOL, 0, 1, create=True)
    with pytest.raises(exception.NoSpace, match='reserve'):
        s.write(c, 0, b'x' * 4096)

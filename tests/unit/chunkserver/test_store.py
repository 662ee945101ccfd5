"""Chunk replicas on disk: checksums, epochs, generations, layout."""

import os
import struct

import pytest

from cinder_ursa import exception
from cinder_ursa.chunkserver import rebuild
from cinder_ursa.chunkserver import store as store_mod
from cinder_ursa.chunkserver.store import blocks
from cinder_ursa.chunkserver.store import mending
from cinder_ursa.common import checksum
from cinder_ursa.protocol import chunkfile

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
    raw = open(tmp_path / 'chunks' / VOL / '3.meta', 'rb').read()
    stored = struct.unpack('!8I', raw[:32])
    assert stored[:2] == (0, 0)  # never written
    assert list(stored[2::2]) == checksum.block_crcs(data)
    assert set(stored[3::2]) == {chunkfile.DATA}  # state data, sequence 0


def test_corruption_is_detected_on_read(st, tmp_path):
    c = st.check_epoch(VOL, 0, 1, create=True)
    st.write(c, 0, os.urandom(8192))
    path = tmp_path / 'chunks' / VOL / '0.data'
    with open(path, 'r+b') as f:
        f.seek(5000)
        old = f.read(1)[0]
        f.seek(5000)
        f.write(bytes([old ^ 0xff]))  # always a change (0xff could be there)
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


def test_master_terms_only_move_forward_and_survive_a_restart(tmp_path):
    s = store_mod.ChunkStore(str(tmp_path))
    assert s.master_term == 0
    s.check_master_term(0)
    s.adopt_master_term(4)
    s.adopt_master_term(2)          # older news changes nothing
    s.check_master_term(4)
    s.check_master_term(5)
    with pytest.raises(exception.NotLeader, match='term 3 is over'):
        s.check_master_term(3)
    s.close()
    # Kept durably: a deposed master is refused after a restart too.
    s = store_mod.ChunkStore(str(tmp_path))
    assert s.master_term == 4
    with pytest.raises(exception.NotLeader):
        s.check_master_term(3)
    s.close()


def test_a_master_term_that_cannot_be_written_is_held_in_memory(tmp_path):
    """Learned in the middle of a heartbeat's reply: a full or failing
    disk must not abort it; the write is tried again at the next call."""
    s = store_mod.ChunkStore(str(tmp_path))
    blocker = tmp_path / 'master-term.tmp'
    blocker.mkdir()         # the atomic write's temporary file cannot open
    s.adopt_master_term(7)
    assert s.master_term == 7
    with pytest.raises(exception.NotLeader):
        s.check_master_term(6)
    assert not (tmp_path / 'master-term').exists()
    blocker.rmdir()
    s.adopt_master_term(7)
    assert (tmp_path / 'master-term').read_text() == '7\n'
    s.close()


def test_state_survives_a_restart(tmp_path):
    s = store_mod.ChunkStore(str(tmp_path))
    ident = s.server_uuid
    c = s.check_epoch(VOL, 7, 4, create=True)
    s.write(c, 0, b'q' * 4096)
    s.adopt_generation(VOL, 9)
    s.sync(*s.take_dirty())
    s.close()
    s = store_mod.ChunkStore(str(tmp_path))
    assert s.server_uuid == ident
    assert s.chunk_list() == [(VOL, 7, 4)]
    assert s.generation(VOL) == 9
    assert s.read(s.check_epoch(VOL, 7, 4), 0, 4) == b'qqqq'
    epoch, allocated, _, crcs = s.chunk_info(VOL, 7)
    assert epoch == 4 and allocated >= 4096 and len(crcs) == 1
    assert s.delete(VOL) == 1
    assert s.chunk_list() == []
    assert not (tmp_path / 'chunks' / VOL).exists()


def test_ranges_outside_a_chunk_are_refused(st):
    c = st.check_epoch(VOL, 0, 1, create=True)
    with pytest.raises(exception.OutOfRange):
        st.write(c, blocks.MAX_CHUNK - 1, b'ab')
    with pytest.raises(exception.OutOfRange):
        st.read(c, -1, 1)


def test_no_space_is_a_clear_error(tmp_path):
    s = store_mod.ChunkStore(str(tmp_path), reserved_bytes=1 << 62)
    c = s.check_epoch(VOL, 0, 1, create=True)
    with pytest.raises(exception.NoSpace, match='reserve'):
        s.write(c, 0, b'x' * 4096)


# --- snapshot layers, zeroing, copy-up ---------------------------------------

B = 4096


def test_first_write_after_a_snapshot_copies_only_the_touched_block(
        st, tmp_path):
    c = st.check_epoch(VOL, 0, 1, create=True)
    st.write(c, 0, b'a' * (64 * B), seq=0)
    st.adopt_snapseq(VOL, 1)
    st.write(c, 5 * B + 10, b'b' * 20, seq=1)
    layer = tmp_path / 'chunks' / VOL / '0.s1.data'
    assert os.stat(layer).st_blocks * 512 <= 2 * B
    assert st.read(c, 5 * B, B, snap=1) == b'a' * B
    assert st.read(c, 5 * B + 10, 20) == b'b' * 20
    # A second write in the same interval copies nothing more.
    st.write(c, 5 * B, b'c' * B, seq=1)
    assert st.read(c, 5 * B, B, snap=1) == b'a' * B


def _trace(monkeypatch):
    """[(call, file name)] of every pwrite, fdatasync and fsync from
    here on."""
    calls = []

    def tracing(fn):
        real = getattr(os, fn)

        def traced(fd, *args):
            calls.append((fn, os.path.basename(
                os.readlink('/proc/self/fd/%d' % fd))))
            return real(fd, *args)
        return traced
    for fn in ('pwrite', 'fdatasync', 'fsync'):
        monkeypatch.setattr(os, fn, tracing(fn))
    return calls


def test_a_copy_on_write_is_durable_before_the_head_is_overwritten(
        st, monkeypatch):
    """The blocks a write copies into a snapshot's layer are synced (and
    the new layer's directory entry) before it overwrites them: a power
    cut must not keep the overwrite and lose the copy.  One sync per
    write, whatever the blocks it copied; a write that copies nothing
    (after the first write of its blocks since the snapshot) syncs
    nothing."""
    c = st.check_epoch(VOL, 0, 1, create=True)
    st.write(c, 0, b'a' * (4 * B), seq=0)
    st.sync(*st.take_dirty())
    calls = _trace(monkeypatch)
    st.write(c, 0, b'b' * (3 * B), seq=1)
    syncs = [i for i, call in enumerate(calls) if call[0] != 'pwrite']
    assert [calls[i] for i in syncs] == [
        ('fdatasync', '0.s1.data'), ('fdatasync', '0.s1.meta'),
        ('fsync', VOL)]
    head = [i for i, call in enumerate(calls)
            if call[1] in ('0.data', '0.meta')]
    assert head and min(head) > max(syncs)
    assert sorted(set(calls[:syncs[0]])) == [
        ('pwrite', '0.s1.data'), ('pwrite', '0.s1.meta')]
    calls.clear()
    st.write(c, B, b'c' * (3 * B), seq=1)          # copies block 3 only
    assert [call for call in calls if call[0] != 'pwrite'] == [
        ('fdatasync', '0.s1.data'), ('fdatasync', '0.s1.meta')]
    calls.clear()
    st.write(c, 0, b'd' * (4 * B), seq=1)          # copies nothing
    assert {call[1] for call in calls} == {'0.data', '0.meta'}
    assert st.read(c, 0, 4 * B, snap=1) == b'a' * (4 * B)
    assert st.read(c, 0, 4 * B) == b'd' * (4 * B)


def test_the_write_path_syncs_the_copies_itself(st, tmp_path):
    """The chunk server's write path copies first (``preserve``), for a
    batch of writes at once, syncs the copies in a worker thread (each
    layer's files once), then applies the writes: they copy nothing
    again, and the next ones have nothing to copy."""
    c = st.check_epoch(VOL, 0, 1, create=True)
    st.write(c, 0, b'a' * (4 * B), seq=0)
    assert st.preserve(c, 0, 2 * B, 0) is None     # no snapshot yet
    copies = st.preserve(c, B // 2, B, 1)          # blocks 0 and 1
    assert len(copies.fds) == 1
    assert copies.dirs == [os.path.join(st.chunks_dir, VOL)]   # new layer
    # Writes waiting behind it: their copies join the batch.
    assert st.preserve(c, B, 2 * B, 1, copies=copies) is copies
    assert st.preserve(c, 0, B, 1, floor=0, copies=copies) is copies
    assert len(copies.fds) == 1 and len(copies.dirs) == 1
    st.sync(copies.fds, copies.dirs)
    layer = tmp_path / 'chunks' / VOL / '0.s1.meta'
    copied = layer.read_bytes()
    st.write(c, B // 2, b'b' * B, seq=1, preserved=True)
    st.write(c, B, b'c' * (2 * B), seq=1, preserved=True)
    assert layer.read_bytes() == copied
    assert st.preserve(c, 0, 3 * B, 1) is None
    assert st.read(c, 0, 4 * B, snap=1) == b'a' * (4 * B)
    assert st.read(c, 0, 4 * B) == (b'a' * (B // 2) + b'b' * (B // 2) +
                                    b'c' * (2 * B) + b'a' * B)


def test_a_layer_new_in_this_run_has_its_entry_synced_with_its_copies(st):
    """The first copy-on-write into a layer created in this run, by a
    copy-on-write or by a repair (put_raw), syncs the directory entry of
    its files too; the next ones do not."""
    c = st.check_epoch(VOL, 0, 1, create=True)
    st.write(c, 0, b'a' * (4 * B), seq=0)
    entries, data = st.raw(c, 0, 1)
    st.put_raw(c, 3, entries, data, layer=2)
    vdir = os.path.join(st.chunks_dir, VOL)
    for seq in (2, 3):
        for blk, dirs in ((0, [vdir]), (1, [])):
            copies = st.preserve(c, blk * B, B, seq)
            assert copies.dirs == dirs, (seq, blk)
            st.sync(copies.fds, copies.dirs)
            st.write(c, blk * B, b'b' * B, seq=seq, preserved=True)


def test_a_copy_torn_by_a_power_cut_is_mended_from_the_head(st):
    """A power cut during the sync of a copy-on-write can leave the
    layer's entry on disk and not its data; the head, not overwritten
    yet, still holds that very version: the repair takes it from
    there.  Not once the head holds another."""
    c = st.check_epoch(VOL, 0, 1, create=True)
    old = os.urandom(2 * B)
    st.write(c, 0, old, seq=0)
    for pair in st.preserve(c, 0, 2 * B, 1).fds:
        for fd in pair:
            os.close(fd)
    os.pwrite(c.layer(1).data_fd, bytes(B), B)     # block 1's data lost
    entries, data = st.raw(c, 0, 2, layer=1)
    assert mending.torn_blocks(entries, data) == [1]
    mended, left = st.mend_from_head(c, 0, entries, data, [1])
    assert left == [] and mended == old
    st.write(c, B, b'n' * B, seq=1, preserved=True)
    assert st.mend_from_head(c, 0, entries, data, [1]) == (data, [1])


def test_snapshot_reads_never_written_blocks_as_absent(st):
    c = st.check_epoch(VOL, 0, 1, create=True)
    st.write(c, 3 * B, b'x' * B, seq=2)
    data, states = st.read_blocks(c, 2 * B, 2 * B, snap=2)
    assert data == bytes(2 * B) and states == bytes([chunkfile.ABSENT] * 2)
    assert st.block_states(c, 2 * B, 2 * B) == bytes([chunkfile.ABSENT,
                                                      chunkfile.DATA])


def test_zero_deallocates_whole_blocks_and_zeroes_partial_ones(st, tmp_path):
    c = st.check_epoch(VOL, 0, 1, create=True)
    st.write(c, 0, b'z' * (8 * B))
    st.write(c, B + 100, b'', zero=True, length=5 * B)
    model = bytearray(b'z' * (8 * B))
    model[B + 100:6 * B + 100] = bytes(5 * B)
    assert st.read(c, 0, 8 * B) == model
    assert st.block_states(c, 0, 8 * B) == bytes(
        [1, 1, 2, 2, 2, 2, 1, 1])
    st.sync(*st.take_dirty())
    used = os.stat(tmp_path / 'chunks' / VOL / '0.data').st_blocks * 512
    assert used <= 4 * B


def test_copy_up_fills_only_absent_blocks(st):
    c = st.check_epoch(VOL, 0, 1, create=True)
    st.write(c, B, b'm' * B)
    st.write(c, 2 * B, b'', zero=True, length=B)
    st.write(c, 0, b'p' * (4 * B), if_absent=True)
    assert st.read(c, 0, 4 * B) == (b'p' * B + b'm' * B + bytes(B)
                                    + b'p' * B)
    with pytest.raises(exception.InvalidArgument):
        st.write(c, 1, b'p' * B, if_absent=True)


class _Model:
    """What every snapshot of one chunk must read (bytes per sequence)."""

    def __init__(self, size):
        self.head = bytearray(size)
        self.snaps = {}


def test_random_writes_snapshots_reverts_and_gc_match_a_model(st):
    import random
    rng = random.Random(7)
    size = 32 * B
    c = st.check_epoch(VOL, 0, 1, create=True)
    m = _Model(size)
    seq = 0
    for step in range(400):
        op = rng.random()
        if op < 0.55:
            off = rng.randrange(size - 1)
            n = rng.randrange(1, min(3 * B, size - off) + 1)
            data = bytes([rng.randrange(1, 256)]) * n
            st.write(c, off, data, seq=seq,
                     floor=st.preserve_floor(VOL, seq))
            m.head[off:off + n] = data
        elif op < 0.7:
            off = rng.randrange(size - 1)
            n = rng.randrange(1, min(5 * B, size - off) + 1)
            st.write(c, off, b'', seq=seq, zero=True, length=n,
                     floor=st.preserve_floor(VOL, seq))
            m.head[off:off + n] = bytes(n)
        elif op < 0.82:
            seq += 1
            m.snaps[seq] = bytes(m.head)
        elif op < 0.9 and m.snaps:
            victim = rng.choice(sorted(m.snaps))
            del m.snaps[victim]
            st.gc(VOL, list(m.snaps), upto=seq)
        elif m.snaps:
            target = rng.choice(sorted(m.snaps))
            st.revert(VOL, target, seq)
            m.head[:] = m.snaps[target]
        assert st.read(c, 0, size) == m.head, step
        for k, want in m.snaps.items():
            assert st.read(c, 0, size, snap=k) == want, (step, k)
        # Once deleted snapshots were reported, nothing more is preserved
        # for them: no block is kept that no snapshot reads.
        assert st.gc(VOL, list(m.snaps), upto=seq, dry_run=True) == 0, step
    # Deleting every snapshot frees every layer.
    st.gc(VOL, [])
    assert c.layers == {}


def test_preserve_floor_follows_the_newest_live_snapshot(st):
    assert st.preserve_floor(VOL, 5) == 5          # nothing reported yet
    st.note_live(VOL, [1, 3], upto=5)               # 4 and 5 were deleted
    assert st.preserve_floor(VOL, 5) == 3
    assert st.preserve_floor(VOL, 2) == 1
    assert st.preserve_floor(VOL, 6) == 6           # newer: presumed live
    st.note_live(VOL, [], upto=4)                   # older news is ignored
    assert st.preserve_floor(VOL, 5) == 3
    c = st.check_epoch(VOL, 0, 1, create=True)
    st.write(c, 0, b'a' * B, seq=3)                 # written after snap 3
    assert list(c.layers) == [3]                    # snap 3 read a hole
    st.write(c, 0, b'b' * B, seq=5, floor=st.preserve_floor(VOL, 5))
    assert list(c.layers) == [3]                    # no live snapshot had 'a'
    assert st.read(c, 0, B, snap=3) == bytes(B)
    assert st.read(c, 0, B) == b'b' * B


def test_metadata_entries_are_big_endian_crc_word_pairs():
    crcs = [0, 1, 0xDEADBEEF, 0xFFFFFFFF]
    assert bytes(chunkfile.encode_entries(crcs, 0x11)) == struct.pack(
        '!8I', 0, 0x11, 1, 0x11, 0xDEADBEEF, 0x11, 0xFFFFFFFF, 0x11)
    words = [5, 6, 7, 0xFFFFFFFC]
    raw = bytes(chunkfile.encode_entries(crcs, words))
    assert chunkfile.decode_entries(raw, 4) == (0, 5, 1, 6, 0xDEADBEEF, 7,
                                            0xFFFFFFFF, 0xFFFFFFFC)
    # One block (the common 4 KiB write) takes its own, shorter way.
    assert bytes(chunkfile.encode_entries([0xDEADBEEF], 0x11)) == \
        struct.pack('!2I', 0xDEADBEEF, 0x11)
    assert bytes(chunkfile.encode_entries([7], [0xFFFFFFFC])) == \
        struct.pack('!2I', 7, 0xFFFFFFFC)


def test_raw_blocks_torn_detection_and_put_raw(st):
    c = st.check_epoch(VOL, 0, 1, create=True)
    old, new = b'o' * 4096, b'n' * 4096
    st.write(c, 0, old + old, seq=2)
    entries, data = st.raw(c, 0, 3)
    assert data == old + old + bytes(4096)
    assert mending.torn_blocks(entries, data) == []
    # Data written and CRC not: torn, and mended by taking the data.
    os.pwrite(c.head.data_fd, new, 4096)
    entries, data = st.raw(c, 0, 3)
    assert mending.torn_blocks(entries, data) == [1]
    mended = mending.mend_entries(entries, data, [1])
    assert mending.torn_blocks(mended, data) == []
    st.put_raw(c, 0, mended, data)
    assert st.read(c, 0, 8192) == old + new
    # The word (snapshot sequence and state) is kept.
    assert st.raw(c, 1, 1)[0][4:] == entries[12:16]
    # A block put as absent is deallocated and reads as zeros.
    st.put_raw(c, 0, bytes(8), new)
    assert st.read(c, 0, 4096) == bytes(4096)
    assert st.raw(None, 5, 2) == (bytes(16), bytes(8192))


def test_a_replica_copied_raw_with_its_layers_reads_the_same(st, tmp_path):
    """Head and snapshot layers copied block for block (raw, per layer)
    into another server's store: every snapshot and the head read the
    same there, block states included, and so do the chunk's CRCs."""
    c = st.check_epoch(VOL, 0, 1, create=True)
    n = 16
    st.write(c, 0, os.urandom(n * 4096), seq=0)
    st.write(c, 4096, os.urandom(3 * 4096), seq=2)      # layer 2
    st.write(c, 0, b'', seq=2, zero=True, length=4096)  # a zeroed block
    st.write(c, 8 * 4096, os.urandom(2 * 4096), seq=5)  # layer 5
    st.write(c, 20 * 4096, os.urandom(4096), seq=5)     # absent before
    assert c.layer_ids() == [2, 5]
    other = store_mod.ChunkStore(str(tmp_path / 'other'))
    try:
        d = other.check_epoch(VOL, 0, 1, create=True)
        blocks_in_use = 24
        for layer in [0] + c.layer_ids():
            entries, data = st.raw(c, 0, blocks_in_use, layer=layer)
            other.put_raw(d, 0, entries, data, layer=layer)
        assert d.layer_ids() == [2, 5]
        for snap in (0, 1, 2, 3, 5):
            assert other.read_blocks(d, 0, blocks_in_use * 4096, snap) == \
                st.read_blocks(c, 0, blocks_in_use * 4096, snap), snap
        assert other.chunk_info(VOL, 0) == st.chunk_info(VOL, 0)
        # A layer the replica does not have reads as "not in this layer".
        assert st.raw(c, 0, 2, layer=9) == (bytes(16), bytes(8192))
    finally:
        other.close()


def test_deep_chunk_info_reports_torn_blocks(st):
    c = st.check_epoch(VOL, 0, 1, create=True)
    data = bytearray(os.urandom(3 * 4096))
    data[2 * 4096 + 7] = 0          # so the byte written below changes it
    st.write(c, 0, bytes(data))
    os.pwrite(c.head.data_fd, b'x', 2 * 4096 + 7)
    plain = st.chunk_info(VOL, 0)
    deep = st.chunk_info(VOL, 0, deep=True)
    assert deep[:4] == plain       # the stored CRCs, compared as before
    assert deep[4] == [2]


def test_take_dirty_of_one_chunk_leaves_the_others(st):
    a = st.check_epoch(VOL, 0, 1, create=True)
    b = st.check_epoch(VOL, 1, 1, create=True)
    st.write(a, 0, b'a' * 4096)
    st.write(b, 0, b'b' * 4096)
    fds, dirs = st.take_dirty(VOL, a)
    assert len(fds) == 1
    # The new chunk files' directory entries are synced with the volume.
    assert os.path.join(st.chunks_dir, VOL) in dirs
    st.sync(fds, dirs)
    fds, dirs = st.take_dirty(VOL)
    assert len(fds) == 1 and not dirs
    st.sync(fds, dirs)
    assert st.take_dirty(VOL) == ([], [])


def test_a_failed_sync_fails_the_volume_for_good(st):
    c = st.check_epoch(VOL, 0, 1, create=True)
    st.write(c, 0, b'a' * 4096)
    st.sync_failed({VOL}, OSError(5, 'Input/output error'))
    with pytest.raises(exception.DiskError, match='fdatasync'):
        st.take_dirty(VOL)
    with pytest.raises(exception.DiskError):
        st.check_epoch(VOL, 0, 1)


def test_one_failed_volume_does_not_keep_the_others_unsynced(st):
    other = '99999999-2222-3333-4444-555555555555'
    a = st.check_epoch(VOL, 0, 1, create=True)
    b = st.check_epoch(other, 0, 1, create=True)
    st.write(a, 0, b'a' * 4096)
    st.write(b, 0, b'b' * 4096)
    st.sync_failed({VOL}, OSError(5, 'Input/output error'))
    fds, dirs = st.take_dirty()      # at shutdown: every volume but VOL
    assert len(fds) == 1
    st.sync(fds, dirs)
    assert st.failed_volumes() == [VOL]


def _push(src, c, dst, d, runs):
    """What a primary's rebuild does with the runs it found: push each
    run of blocks raw, in its layer."""
    for layer, first, count in runs:
        entries, data = src.raw(c, first, count, layer)
        dst.put_raw(d, first, entries, data, layer=layer)


def _runs(src, c, dst, d, n=64):
    mine = dict(src.entry_tables(c, 0, n))
    theirs = dict(dst.entry_tables(d, 0, n)) if d is not None else {}
    return rebuild.differing_runs(mine, theirs, 0)


def test_a_returning_copy_gets_only_the_blocks_that_differ(st, tmp_path):
    """Two copies alike; then, while one is away, the other takes
    overwrites, a snapshot's copy-on-write, a zeroed block and a block
    beyond the old end, and the away copy holds a layer the other no
    longer has and a block it alone wrote (lost elsewhere by a crash).
    The runs found cover exactly those blocks, and after pushing them
    the two copies read the same in every snapshot and the head."""
    c = st.check_epoch(VOL, 0, 1, create=True)
    other = store_mod.ChunkStore(str(tmp_path / 'other'))
    try:
        d = other.check_epoch(VOL, 0, 1, create=True)
        base = os.urandom(32 * 4096)
        st.write(c, 0, base, seq=1)
        other.write(d, 0, base, seq=1)
        assert _runs(st, c, other, d) == []
        st.write(c, 3 * 4096, os.urandom(2 * 4096), seq=1)   # blocks 3-4
        st.write(c, 10 * 4096, os.urandom(4096), seq=4)      # layer 4
        st.write(c, 12 * 4096, b'', seq=4, zero=True, length=4096)
        st.write(c, 40 * 4096, os.urandom(4096), seq=4)      # new block
        other.write(d, 20 * 4096, os.urandom(4096), seq=1)   # away's own
        other.write(d, 21 * 4096, os.urandom(4096), seq=7)   # layer 7
        runs = _runs(st, c, other, d)
        head = sorted((f, n) for layer, f, n in runs if layer == 0)
        assert head == [(3, 2), (10, 1), (12, 1), (20, 2), (40, 1)]
        # The new block 40 was absent at snapshot 4: preserved as such.
        assert sorted((f, n) for layer, f, n in runs if layer == 4) == [
            (10, 1), (12, 1), (40, 1)]
        assert sorted((f, n) for layer, f, n in runs if layer == 7) == [
            (21, 1)]
        _push(st, c, other, d, runs)
        assert _runs(st, c, other, d) == []
        for snap in (0, 1, 2, 4, 5, 7):
            assert other.read_blocks(d, 0, 48 * 4096, snap) == \
                st.read_blocks(c, 0, 48 * 4096, snap), snap
        # Epoch, layers digest and CRCs (the emptied layer 7 still takes
        # a little room until the next collection).
        mine, theirs = st.chunk_info(VOL, 0), other.chunk_info(VOL, 0)
        assert (theirs[0], theirs[2:]) == (mine[0], mine[2:])
    finally:
        other.close()


def test_a_copy_with_nothing_gets_every_block_in_use(st, tmp_path):
    c = st.check_epoch(VOL, 0, 1, create=True)
    st.write(c, 5 * 4096, os.urandom(3 * 4096), seq=1)
    st.write(c, 6 * 4096, os.urandom(4096), seq=2)
    runs = _runs(st, c, None, None)
    # Blocks first written at sequence 1 are "absent" in layer 1.
    assert sorted(runs) == [(0, 5, 3), (1, 5, 3), (2, 6, 1)]
    assert st.entry_tables(c, 0, 0) == [] and st.entry_tables(None, 0, 9) \
        == []
    # Tables hold no trailing absent entries.
    assert [(layer, len(t) // 8) for layer, t in st.entry_tables(c, 0, 64)] \
        == [(0, 8), (1, 8), (2, 7)]


def test_rejoin_makes_a_stale_copy_a_joining_one_across_restarts(tmp_path):
    st = store_mod.ChunkStore(str(tmp_path))
    c = st.check_epoch(VOL, 0, 3, create=True)
    st.write(c, 0, b'x' * 4096)
    st.mark_stale(VOL, 0)
    assert st.rejoin(VOL, 1) is None          # no copy of chunk 1 here
    assert st.rejoin(VOL, 0) is c and not c.stale and c.joining
    with pytest.raises(exception.StaleReplica, match='brought up to date'):
        st.check_epoch(VOL, 0, 3)
    assert st.check_epoch(VOL, 0, 4, create=True) is c   # takes writes
    st.close(clean=True)
    st = store_mod.ChunkStore(str(tmp_path))
    try:
        c = st.held(VOL, 0)
        assert c.joining and not c.stale and c.epoch == 4
        with pytest.raises(exception.StaleReplica):
            st.check_epoch(VOL, 0, 4)
    finally:
        st.close()


def test_block_states_since_a_snapshot(st):
    """FLAG_SINCE's answer: a block changed after snapshot ``since`` when
    the version the view sees was written at ``since`` or later, for the
    head and for a snapshot seen through its layers."""
    U, C = chunkfile.UNCHANGED, chunkfile.CHANGED
    c = st.check_epoch(VOL, 0, 1, create=True)

    def preserve(offset, length, seq):
        copies = st.preserve(c, offset, length, seq)
        st.sync(copies.fds, copies.dirs)
    st.write(c, 0, b'a' * (4 * B), seq=0)            # before snapshot 1
    # Snapshot 1; then writes at sequence 1 (copy-on-write first).
    preserve(B, 2 * B, 1)
    st.write(c, B, b'b' * B, seq=1, preserved=True)
    st.write(c, 2 * B, b'', zero=True, length=B, seq=1, preserved=True)
    st.write(c, 5 * B, b'c' * B, seq=1)
    # Snapshot 2; then block 0 rewritten at sequence 2.
    preserve(0, B, 2)
    st.write(c, 0, b'd' * B, seq=2, preserved=True)
    assert st.block_states(c, 0, 6 * B, since=1) == bytes(
        [C | chunkfile.DATA, C | chunkfile.DATA, C | chunkfile.ZERO, U, U,
         C | chunkfile.DATA])
    assert st.block_states(c, 0, 6 * B, since=2) == bytes(
        [C | chunkfile.DATA, U, U, U, U, U])
    # Snapshot 2 as seen since snapshot 1: block 0 is its old version.
    assert st.block_states(c, 0, 6 * B, snap=2, since=1) == bytes(
        [U, C | chunkfile.DATA, C | chunkfile.ZERO, U, U, C | chunkfile.DATA])
    # Snapshot 1 sees nothing written at or after its sequence.
    assert st.block_states(c, 0, 6 * B, snap=1) == bytes(
        [chunkfile.DATA] * 4 + [chunkfile.ABSENT] * 2)
    # A chunk with no copy here changed in no view.
    assert st.block_states(None, 0, 3 * B, since=1) == bytes(3)

"""The pieces of the resync after a crash that need no cluster: which
replicas are suspect, and how differing blocks are grouped."""

from cinder_ursa.chunkserver import resync
from cinder_ursa.chunkserver import store as store_mod

VOL = '11111111-2222-3333-4444-555555555555'


def test_spans_group_consecutive_blocks_up_to_a_limit():
    assert resync._spans([], 4) == []
    assert resync._spans([1, 2, 3, 7, 9, 10], 4) == [(1, 3), (7, 1), (9, 2)]
    assert resync._spans(list(range(10)), 4) == [(0, 4), (4, 4), (8, 2)]


class _Server(resync.ResyncMixin):
    def __init__(self, store):
        self.store = store


def test_after_a_crash_every_replica_but_stale_and_joining_is_suspect(
        tmp_path):
    st = store_mod.ChunkStore(str(tmp_path))
    try:
        for i in range(4):
            c = st.check_epoch(VOL, i, 1, create=True)
            st.write(c, 0, b'x' * 4096)
        st.mark_stale(VOL, 1)
        st.rejoin(VOL, 2)
        server = _Server(st)
        assert server._suspect == frozenset()     # a clean start
        server.suspect_after_crash()
        assert server._suspect == {(VOL, 0), (VOL, 3)}
    finally:
        st.close()


def test_an_unfinished_resync_survives_a_clean_stop(tmp_path):
    """A crash, then a clean stop before every replica was compared: the
    next start still resyncs (and local reads stay away meanwhile)."""
    st = store_mod.ChunkStore(str(tmp_path))
    c = st.check_epoch(VOL, 0, 1, create=True)
    st.write(c, 0, b'x' * 4096)
    st.close(clean=True)
    st = store_mod.ChunkStore(str(tmp_path))
    assert not st.unclean
    server = _Server(st)
    server.suspect_after_crash()           # as after a crash
    assert (tmp_path / 'resyncing').exists()
    st.close(clean=True)
    st = store_mod.ChunkStore(str(tmp_path))
    try:
        assert st.resync_needed and not st.unclean   # nothing to sync
        st.set_resyncing(False)
        assert not (tmp_path / 'resyncing').exists()
    finally:
        st.close(clean=True)
    st = store_mod.ChunkStore(str(tmp_path))
    assert not st.unclean and not st.resync_needed
    st.close(clean=True)


def test_a_machine_crash_is_remembered_until_the_master_knew(tmp_path):
    """After an unclean stop with another boot id, the store says it may
    have lost unsynced writes, and says it again after a restart (or a
    clean stop) until the master was told."""
    st = store_mod.ChunkStore(str(tmp_path))
    c = st.check_epoch(VOL, 0, 1, create=True)
    st.write(c, 0, b'x' * 4096)
    st.close()                                  # no clean stop
    (tmp_path / 'boot-id').write_text('another boot\n')
    st = store_mod.ChunkStore(str(tmp_path))
    assert st.lost_cache and st.unclean and st.resync_needed
    st.close(clean=True)
    st = store_mod.ChunkStore(str(tmp_path))    # same boot, clean stop
    assert st.lost_cache and st.resync_needed and not st.unclean
    st.lost_cache_told()
    assert not st.lost_cache
    st.close(clean=True)
    st = store_mod.ChunkStore(str(tmp_path))
    try:
        assert not (st.lost_cache or st.unclean or st.resync_needed)
    finally:
        st.close(clean=True)
    # A process crash (same boot) is no machine crash.
    st = store_mod.ChunkStore(str(tmp_path))
    st.close()
    st = store_mod.ChunkStore(str(tmp_path))
    try:
        assert st.unclean and not st.lost_cache
    finally:
        st.close(clean=True)

"""Joining copies the master does not count on become stale again
(ControlMixin._sweep_joining): a copy a primary started to bring up to
date, whose copy then failed before the master recorded it, would
otherwise stay joining, known to no master, until a restart."""

import asyncio
import time

import pytest

from cinder_ursa.chunkserver import authority
from cinder_ursa.chunkserver import controlplane
from cinder_ursa.chunkserver import store as store_mod

VOL = '11111111-2222-3333-4444-555555555555'


class _Authority:
    """The master's views of chunks, as ``confirm`` would learn them."""

    def __init__(self):
        self.views = {}
        self.asked = []

    async def confirm(self, vol, idx):
        self.asked.append((vol, idx))

    def current(self, vol, idx):
        return self.views.get((vol, idx))


class _Server(controlplane.ControlMixin):
    def __init__(self, store):
        self.id = 7
        self.store = store
        self.authority = _Authority()

    def _answered(self, frame, op, nbytes=0):
        pass        # the metrics (server.ChunkServer's)


@pytest.fixture
def server(tmp_path):
    st = store_mod.ChunkStore(str(tmp_path))
    for idx in (0, 1):
        c = st.check_epoch(VOL, idx, 1, create=True)
        st.write(c, 0, b'x' * 4096)
        st.mark_stale(VOL, idx)
        st.rejoin(VOL, idx)
    yield _Server(st)
    st.close()


def _sweep(server, at):
    asyncio.run(server._sweep_joining(at))


def test_a_joining_copy_the_master_does_not_list_is_stale_again(server):
    st = server.store
    server.authority.views[(VOL, 0)] = authority.ChunkView(5, [1, 2, 3], 2)
    server.authority.views[(VOL, 1)] = authority.ChunkView(
        5, [1, 2, 3], 2, joining=[7])
    _sweep(server, time.monotonic() + controlplane.JOINING_SWEEP + 1)
    assert st.held(VOL, 0).stale
    assert not st.held(VOL, 1).stale          # being copied: left alone
    # Kept: a later copy to this server starts from it.
    c = st.rejoin(VOL, 0)
    assert c is not None and not c.stale and c.joining
    assert st.read(c, 0, 4096) == b'x' * 4096


def test_a_copy_that_just_joined_is_not_asked_about(server):
    _sweep(server, time.monotonic())
    assert server.authority.asked == []
    assert not server.store.held(VOL, 0).stale


def test_a_copy_joined_again_while_the_master_was_asked_is_left(server):
    """The planner copied to it again between the question and the
    answer: the answer is about the old attempt."""
    st = server.store

    class Racing(_Authority):
        async def confirm(self, vol, idx):
            st.rejoin(vol, idx)
    server.authority = Racing()
    server.authority.views[(VOL, 0)] = authority.ChunkView(5, [1, 2, 3], 2)
    _sweep(server, time.monotonic() + controlplane.JOINING_SWEEP + 1)
    assert not st.held(VOL, 0).stale


def test_a_copy_a_forwarded_write_made_joining_just_now_is_left(tmp_path):
    """A copy created by a primary's forwarded write (set_joining, not
    rejoin) is young too: the first sweep after the server started must
    not take it for one abandoned long ago."""
    st = store_mod.ChunkStore(str(tmp_path))
    try:
        c = st.check_epoch(VOL, 0, 1, create=True)
        st.set_joining(c, True)
        server = _Server(st)
        server.authority.views[(VOL, 0)] = authority.ChunkView(5, [1, 2, 3],
                                                               2)
        _sweep(server, time.monotonic())
        assert server.authority.asked == []
        assert not st.held(VOL, 0).stale
    finally:
        st.close()


class _Conn:
    master_term = None

    def __init__(self):
        self.sent = []

    def send(self, frame):
        self.sent.append(frame)


def _entries(server, idx):
    from cinder_ursa.protocol import codec
    from cinder_ursa.protocol import control
    frame = codec.FrameDecoder().feed(control.encode_entries(
        5, VOL, idx, 0, 1))[0]
    conn = _Conn()
    server._control(conn, frame, None, True)
    return control.decode_entries_ok(
        codec.FrameDecoder().feed(conn.sent[0])[0].body)


def test_a_copy_swept_stale_refuses_its_primarys_comparison(server):
    """Swept stale while its primary was still to record the join (a
    master failover): the primary's next ENTRIES is refused, so the copy
    fails and is tried again, and a stale copy is never promoted."""
    from cinder_ursa import exception
    assert _entries(server, 0)[0] == 1          # joining: compared
    server.store.mark_stale(VOL, 0)
    with pytest.raises(exception.StaleReplica, match='copy it again'):
        _entries(server, 0)

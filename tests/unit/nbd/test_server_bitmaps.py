"""qemu:dirty-bitmap:<snapshot> in NbdServer over stand-ins: which
snapshots an export offers (older ones only for a snapshot export, none
to a client that could not open it), an error when no master answers,
the lookups they count; block status replies of several contexts; a
session's bitmap ending once its snapshot is deleted; VolumeBackend's
dirty extents."""

import asyncio
import logging
import struct

import pytest

from cinder_ursa import exception
from cinder_ursa.nbd import backend as backend_mod
from cinder_ursa.nbd import bitmaps
from cinder_ursa.nbd import handshake as hs
from cinder_ursa.nbd import protocol as p
from cinder_ursa.nbd import server as server_mod
from tests.unit.nbd import test_server as transmission
from tests.unit.nbd import test_server_policy as policy

MiB = 1024 * 1024


def snap(sid, name, seq, status='available', volume_id='id-1'):
    return {'id': sid, 'name': name, 'volume_id': volume_id,
            'volume_name': 'vol' if volume_id == 'id-1' else 'other',
            'seq': seq, 'size': 4 * MiB, 'status': status}


class Master(policy.Master):
    """The policy tests' master, with snapshots s0 < s1 of ``vol``, s2
    still being created, and one of another volume."""

    def __init__(self, attached=(('id-1', 'attached'),), down=False):
        super().__init__(attached)
        self.down = down
        self.snaps = [snap('sid0', 's0', 3), snap('sid1', 's1', 5),
                      snap('sid2', 's2', 7, 'creating'),
                      snap('sidx', 'x', 2, volume_id='id-2')]

    def _up(self):
        if self.down:
            raise exception.UrsaConnectionError(peer='master',
                                                reason='stand-in: down')

    async def snapshots(self, volume=None):
        self.calls.append(('snapshots', volume))
        self._up()
        return [dict(s) for s in self.snaps
                if volume in (None, s['volume_id'])]

    async def snapshot(self, ref):
        self.calls.append(('snapshot', ref))
        self._up()
        for s in self.snaps:
            if ref in (s['id'], '%s@%s' % (s['volume_name'], s['name']),
                       '%s@%s' % (s['volume_id'], s['name'])):
                return dict(s)
        raise exception.NotFound(kind='snapshot', name=ref)


def meta(name, *queries):
    return p.encode_meta_context(name, list(queries))


def negotiate(server, *options, trusted=True):
    """(the replies, the Negotiation) of a handshake that negotiated
    structured replies, then ``options``, then aborted."""
    stream = policy.Stream(
        struct.pack('>I', p.FLAG_C_FIXED_NEWSTYLE) +
        policy.opt(p.OPT_STRUCTURED_REPLY) + b''.join(options) +
        policy.opt(p.OPT_ABORT), trusted=trusted)
    neg = hs.Negotiation()

    async def main():
        return await server._handshake(stream, neg)
    assert asyncio.run(main()) is None
    return policy.replies(stream.out)[1:], neg


def contexts(got):
    """[(id, name)] of the NBD_REP_META_CONTEXT replies."""
    return [(struct.unpack_from('>I', d)[0], d[4:].decode())
            for _, t, d in got if t == p.REP_META_CONTEXT]


def test_set_selects_the_volume_s_snapshots_that_exist():
    master = Master()
    got, neg = negotiate(policy.secure(master), policy.opt(
        p.OPT_SET_META_CONTEXT, meta(
            'vol', 'qemu:dirty-bitmap:s1', 'base:allocation',
            'qemu:dirty-bitmap:s2', 'qemu:dirty-bitmap:x',
            'qemu:dirty-bitmap:nope')))
    assert contexts(got) == [(1, 'base:allocation'),
                             (2, 'qemu:dirty-bitmap:s1')]
    assert [c.bitmap and c.bitmap['id'] for c in neg.contexts] == [
        None, 'sid1']
    # Each name is looked up in the volume, no list is asked for.
    assert [c for c in master.calls if c[0].startswith('snapshot')] == [
        ('snapshot', 'id-1@%s' % n) for n in ('s1', 's2', 'x', 'nope')]


def test_names_no_snapshot_can_have_are_not_looked_up():
    master = Master()
    got, neg = negotiate(policy.secure(master), policy.opt(
        p.OPT_SET_META_CONTEXT, meta('vol', 'qemu:dirty-bitmap:../s1',
                                     'qemu:dirty-bitmap:s0')))
    assert contexts(got) == [(1, 'qemu:dirty-bitmap:s0')]
    assert ('snapshot', 'id-1@s0') in master.calls
    assert not [c for c in master.calls if '/' in c[1]]


def test_too_many_names_in_one_option():
    master = Master()
    names = ['qemu:dirty-bitmap:n%d' % i
             for i in range(hs.MAX_BITMAP_NAMES + 1)]
    got, neg = negotiate(policy.secure(master), policy.opt(
        p.OPT_SET_META_CONTEXT, meta('vol', *names)))
    assert got[0][1] == p.REP_ERR_TOO_BIG
    assert master.calls == []


def test_list_every_bitmap_of_the_live_volume_and_the_older_of_a_snapshot():
    server = policy.secure(Master())
    got, _ = negotiate(server,
                       policy.opt(p.OPT_LIST_META_CONTEXT, meta('vol')))
    assert contexts(got) == [(0, 'base:allocation'),
                             (0, 'qemu:dirty-bitmap:s0'),
                             (0, 'qemu:dirty-bitmap:s1')]
    got, _ = negotiate(server, policy.opt(
        p.OPT_LIST_META_CONTEXT, meta('vol@s1', 'qemu:')))
    assert contexts(got) == [(0, 'qemu:dirty-bitmap:s0')]


def test_an_export_the_client_could_not_open_offers_no_bitmap():
    """Not attached, unknown, or named without the token over TCP: the
    reply of an export with no snapshots (a probe learns nothing)."""
    for master, name, trusted in (
            (Master(attached=()), 'vol', True),
            (Master(), 'nope', True),
            (Master(), 'vol', False)):
        got, _ = negotiate(policy.secure(master), policy.opt(
            p.OPT_LIST_META_CONTEXT, meta(name, 'qemu:')), trusted=trusted)
        assert [t for _, t, _ in got] == [p.REP_ACK, p.REP_ACK]  # +ABORT
        assert contexts(got) == []
    assert master.calls == []  # no token: the master was not asked
    got, _ = negotiate(policy.secure(Master()), policy.opt(
        p.OPT_LIST_META_CONTEXT, meta(policy.named('vol'), 'qemu:')),
        trusted=False)
    assert len(contexts(got)) == 2


def test_a_principal_that_may_not_list_snapshots_still_sets_by_name(
        caplog):
    """The host role may read a snapshot, not list a volume's: a LIST
    shows no bitmap (and a warning says why), a SET by name works."""
    master = Master()

    async def forbidden(volume=None):
        raise exception.Forbidden(reason='stand-in: role host')
    master.snapshots = forbidden
    server = policy.secure(master)
    with caplog.at_level(logging.WARNING, 'cinder_ursa.nbd.server'):
        got, _ = negotiate(server, policy.opt(
            p.OPT_LIST_META_CONTEXT, meta('vol')))
    assert contexts(got) == [(0, 'base:allocation')]
    assert 'cannot be listed' in caplog.text
    got, _ = negotiate(server, policy.opt(
        p.OPT_SET_META_CONTEXT, meta('vol', 'qemu:dirty-bitmap:s0')))
    assert contexts(got) == [(1, 'qemu:dirty-bitmap:s0')]


def test_no_master_is_an_error_the_client_may_retry():
    master = Master(down=True)
    server = server_mod.NbdServer(policy.Cluster(master))
    got, neg = negotiate(server, policy.opt(
        p.OPT_SET_META_CONTEXT, meta('vol', 'qemu:dirty-bitmap:s0')))
    assert got[0][1] == p.REP_ERR_POLICY
    assert b'cannot be listed now' in got[0][2]
    assert b'try again' in got[0][2]
    assert neg.contexts == []


def test_bitmaps_asked_for_right_after_their_export_count_with_it():
    """nbdinfo --list describes each export, then lists its contexts:
    one lookup each; bitmaps asked for on their own count."""
    server = policy.secure(Master())
    described = [policy.opt(p.OPT_INFO, policy.info('vol')),
                 policy.opt(p.OPT_LIST_META_CONTEXT, meta('vol'))]
    negotiate(server, *described * server_mod.MAX_LOOKUPS)
    with pytest.raises(server_mod._TooManyLookups):
        negotiate(server, *described * server_mod.MAX_LOOKUPS +
                  described[1:])
    with pytest.raises(server_mod._TooManyLookups):
        negotiate(server, *described[1:] * (server_mod.MAX_LOOKUPS + 1))


# --- transmission ------------------------------------------------------------

class Marked(transmission.Recording):
    """base:allocation: a block of data, then holes; each dirty bitmap:
    two blocks changed, then none."""

    async def extents(self, offset, length):
        self.calls.append(('extents', offset, length))
        return [(4096, 0), (length - 4096, p.STATE_HOLE | p.STATE_ZERO)]

    async def dirty_extents(self, snapshot, offset, length):
        self.calls.append(('dirty', snapshot['name'], offset, length))
        return [(8192, p.STATE_DIRTY), (length - 8192, 0)]


def serve(master, backend, requests, *selected):
    neg = hs.Negotiation()
    neg.structured = True
    neg.contexts = [hs.MetaContext(i + 1, c if c == p.META_BASE_ALLOCATION
                                   else p.META_DIRTY_BITMAP + c['name'],
                                   None if c == p.META_BASE_ALLOCATION
                                   else c)
                    for i, c in enumerate(selected)]
    stream = transmission.Stream(requests)
    server = server_mod.NbdServer(policy.Cluster(master))
    asyncio.run(server._transmission(stream, transmission.Export(backend),
                                     neg))
    return stream.out, server


def chunks(out):
    """[(flags, type, handle, payload)] of structured reply chunks."""
    got = []
    for data in out:
        at = 0
        while at < len(data):
            _, flags, rtype, handle, n = p.STRUCTURED_REPLY.unpack_from(
                data, at)
            at += p.STRUCTURED_REPLY.size
            got.append((flags, rtype, handle, data[at:at + n]))
            at += n
    return got


def status(payload):
    (cid,) = struct.unpack_from('>I', payload)
    return cid, [struct.unpack_from('>II', payload, at)
                 for at in range(4, len(payload), 8)]


def test_one_chunk_per_context_the_last_one_done():
    master = Master()
    s0, s1 = master.snaps[:2]
    b = Marked()
    out, server = serve(master, b, [
        (0, p.CMD_BLOCK_STATUS, 1, 0, 65536, None),
        (p.CMD_FLAG_REQ_ONE, p.CMD_BLOCK_STATUS, 2, 4096, 4096, None),
    ], p.META_BASE_ALLOCATION, s0, s1)
    got = chunks(out)
    assert [(f, t, h) for f, t, h, _ in got] == [
        (0, p.REPLY_TYPE_BLOCK_STATUS, 1), (0, p.REPLY_TYPE_BLOCK_STATUS, 1),
        (p.REPLY_FLAG_DONE, p.REPLY_TYPE_BLOCK_STATUS, 1),
        (0, p.REPLY_TYPE_BLOCK_STATUS, 2), (0, p.REPLY_TYPE_BLOCK_STATUS, 2),
        (p.REPLY_FLAG_DONE, p.REPLY_TYPE_BLOCK_STATUS, 2)]
    assert [status(d) for *_, d in got[:3]] == [
        (1, [(4096, 0), (61440, 3)]), (2, [(8192, 1), (57344, 0)]),
        (3, [(8192, 1), (57344, 0)])]
    # REQ_ONE: one extent per context.
    assert [status(d) for *_, d in got[3:]] == [
        (1, [(4096, 0)]), (2, [(8192, 1)]), (3, [(8192, 1)])]
    assert ('dirty', 's1', 0, 65536) in b.calls
    assert server.metrics.ops.count('block_status') == 2


def test_block_status_lengths_are_capped():
    master = Master()
    b = Marked()
    b.size = lambda: 4 << 30
    serve(master, b, [(0, p.CMD_BLOCK_STATUS, 1, 0, (4 << 30) - 1, None)],
          master.snaps[0])
    assert b.calls[0] == ('dirty', 's0', 0, server_mod.BLOCK_STATUS_LIMIT)


def test_block_status_of_a_deleted_snapshot_fails_with_a_reason(
        monkeypatch):
    monkeypatch.setattr(bitmaps, 'SNAPSHOT_RECHECK', 0.0)
    master = Master()
    gone = master.snaps.pop(1)
    out, _ = serve(master, Marked(), [
        (0, p.CMD_BLOCK_STATUS, 1, 0, 4096, None),
        (0, p.CMD_READ, 2, 0, 3, None)],
        p.META_BASE_ALLOCATION, gone)
    got = chunks(out)
    [(flags, rtype, error)] = [(f, t, d) for f, t, h, d in got if h == 1]
    assert (flags, rtype) == (p.REPLY_FLAG_DONE, p.REPLY_TYPE_ERROR)
    err, n = struct.unpack_from('>IH', error)
    assert err == p.NBD_EINVAL
    assert b'snapshot s1 was deleted' in error[6:6 + n]
    assert any(h == 2 and t == p.REPLY_TYPE_OFFSET_DATA
               for _, t, h, _ in got)  # the session goes on


# --- a session's bitmap ------------------------------------------------------

def bitmap(master, backend=None, name='s0'):
    s = next(s for s in master.snaps if s['name'] == name)
    return bitmaps.DirtyBitmap(master, backend or Marked(), s,
                               p.META_DIRTY_BITMAP + name)


def test_the_snapshot_is_asked_for_at_most_every_recheck(monkeypatch):
    master = Master()
    bm = bitmap(master)

    async def main():
        for _ in range(5):
            assert await bm.extents(0, MiB) == [(8192, 1), (MiB - 8192, 0)]
    asyncio.run(main())
    assert not [c for c in master.calls if c[0] == 'snapshot']
    monkeypatch.setattr(bitmaps, 'SNAPSHOT_RECHECK', 0.0)
    asyncio.run(main())
    assert master.calls.count(('snapshot', 'sid0')) == 5


@pytest.mark.parametrize('change', ['deleted', 'trash', 'recreated'])
def test_a_bitmap_ends_with_its_snapshot(monkeypatch, change):
    monkeypatch.setattr(bitmaps, 'SNAPSHOT_RECHECK', 0.0)
    master = Master()
    bm = bitmap(master)
    if change == 'deleted':
        del master.snaps[0]
    elif change == 'trash':
        master.snaps[0]['status'] = 'trash'
    else:
        master.snaps[0] = snap('sid0', 's0', 9)  # (same id: a stand-in)
    for _ in range(2):  # and for good
        with pytest.raises(exception.InvalidArgument) as e:
            asyncio.run(bm.extents(0, MiB))
        assert 'snapshot s0 was deleted after this session selected ' \
            'qemu:dirty-bitmap:s0' in str(e.value)


def test_no_master_leaves_the_bitmap_served(monkeypatch, caplog):
    monkeypatch.setattr(bitmaps, 'SNAPSHOT_RECHECK', 0.0)
    master = Master(down=True)
    bm = bitmap(master)
    with caplog.at_level(logging.WARNING, 'cinder_ursa.nbd.bitmaps'):
        assert asyncio.run(bm.extents(0, MiB))[0] == (8192, 1)
    assert 'no master answered' in caplog.text


# --- VolumeBackend -----------------------------------------------------------

class View:
    """What VolumeBackend.dirty_extents uses of a Volume."""

    def __init__(self, snap=0):
        self.id, self.name, self.snap = 'id-1', 'vol', snap
        self.asked = []

    async def changed_runs(self, since, offset, length):
        self.asked.append((since, offset, length))
        return [(4096, False), (8192, True), (length - 12288, False)]


def test_volume_backend_dirty_extents():
    view = View()
    b = backend_mod.VolumeBackend(view, read_only=True)
    s0 = snap('sid0', 's0', 3)
    assert asyncio.run(b.dirty_extents(s0, 0, MiB)) == [
        (4096, 0), (8192, p.STATE_DIRTY), (MiB - 12288, 0)]
    assert view.asked == [(3, 0, MiB)]
    # A snapshot of another volume, or not older than the view: refused
    # before any chunk server is asked.
    for wrong, v in ((snap('sidx', 'x', 2, volume_id='id-2'), View()),
                     (s0, View(snap=3))):
        with pytest.raises(exception.InvalidArgument):
            asyncio.run(backend_mod.VolumeBackend(v, True).dirty_extents(
                wrong, 0, MiB))
        assert v.asked == []


def test_other_backends_have_no_dirty_bitmaps():
    with pytest.raises(OSError) as e:
        asyncio.run(transmission.Recording().dirty_extents(
            snap('sid0', 's0', 3), 0, 4096))
    assert p.nbd_error(e.value) == p.NBD_EINVAL

"""``qemu:dirty-bitmap:<snapshot>`` through ursa-nbd, seen by nbdinfo,
qemu-img and a client by hand: the ranges written or discarded after a
snapshot, block-aligned, and nothing else; base:allocation alongside; a
snapshot export's view; names that do not exist; a snapshot deleted
while a session uses it.  Under CI=true a missing client is a failure,
elsewhere a skip."""

import json
import socket
import struct
import subprocess
import time

import pytest

from cinder_ursa.nbd import bitmaps
from cinder_ursa.nbd import protocol as p
from tests.fixtures.cluster import module_cluster
from tests.functional.nbd.test_nbd import need
from tests.functional.nbd.test_nbd import run

MiB = 1024 * 1024
KiB = 1024
SIZE = 16 * MiB
BLOCK = 4096


@pytest.fixture(scope='module')
def aio(tmp_path_factory):
    yield from module_cluster(tmp_path_factory, 'dirty', nbd=True)


def uri(aio, name):
    return 'nbd://127.0.0.1:%d/%s' % (aio.nbd_port, name)


def aligned(offset, length):
    """The whole blocks a byte range touches."""
    start = offset - offset % BLOCK
    end = -(-(offset + length) // BLOCK) * BLOCK
    return start, end - start


# What is written after snapshot ``a`` (qemu-io commands) and the ranges
# that then changed: rewritten, discarded (a hole now), zeroed and kept
# allocated (NO_HOLE), an unaligned write (its blocks), a chunk written
# for the first time.
AFTER_A = ('write -P 0x22 1M 64k', 'discard 2M 256k', 'write -z 3M 8k',
           'write -P 0x33 5120100 10k', 'write -P 0x44 12M 4k')
CHANGED_A = [(1 * MiB, 64 * KiB), (2 * MiB, 256 * KiB), (3 * MiB, 8 * KiB),
             aligned(5120100, 10 * KiB), (12 * MiB, 4 * KiB)]
# After snapshot ``b``: seen by the live volume, not by ``vol@b``.
AFTER_B = ('write -P 0x55 14M 4k',)


@pytest.fixture(scope='module')
def vol(aio):
    """Volume ``dirty``: 8 MiB written, snapshot ``a``, AFTER_A, snapshot
    ``b``, AFTER_B."""
    need('qemu-io')
    cl = aio.client()
    cl.create_volume('dirty', SIZE, chunk_size=4 * MiB)
    qemu_io('write -P 0x11 0 8M', export=uri(aio, 'dirty'))
    cl.create_snapshot('dirty', 'a')
    qemu_io(*AFTER_A, export=uri(aio, 'dirty'))
    cl.create_snapshot('dirty', 'b')
    qemu_io(*AFTER_B, export=uri(aio, 'dirty'))
    return 'dirty'


def qemu_io(*commands, export):
    args = ['qemu-io', '-f', 'raw']
    for c in commands:
        args += ['-c', c]
    out = run(*args, export)
    assert 'failed' not in out.lower(), out


def dirty_of(extents):
    """[(offset, length)] of the dirty extents of ``nbdinfo --map
    --json``, merged, after checking that the extents tile the export."""
    pos, out = 0, []
    for e in extents:
        assert e['offset'] == pos
        pos += e['length']
        if e['type'] & p.STATE_DIRTY:
            if out and sum(out[-1]) == e['offset']:
                out[-1] = (out[-1][0], out[-1][1] + e['length'])
            else:
                out.append((e['offset'], e['length']))
    assert pos == SIZE
    return out


def nbdinfo_map(aio, export, context):
    return json.loads(run('nbdinfo', '--json', '--map=%s' % context,
                          uri(aio, export)))


def test_nbdinfo_map_shows_what_changed_after_the_snapshot(aio, vol):
    need('nbdinfo')
    extents = nbdinfo_map(aio, vol, 'qemu:dirty-bitmap:a')
    assert dirty_of(extents) == CHANGED_A + [(14 * MiB, 4 * KiB)]
    assert {e['description'] for e in extents} == {'clean', 'dirty'}
    extents = nbdinfo_map(aio, vol, 'qemu:dirty-bitmap:b')
    assert dirty_of(extents) == [(14 * MiB, 4 * KiB)]


def test_nbdinfo_lists_a_context_per_snapshot(aio, vol):
    need('nbdinfo')
    info = json.loads(run('nbdinfo', '--json', uri(aio, vol)))
    assert info['exports'][0]['contexts'] == [
        'base:allocation', 'qemu:dirty-bitmap:a', 'qemu:dirty-bitmap:b']
    # A snapshot export: only the snapshots older than it.
    info = json.loads(run('nbdinfo', '--json', uri(aio, vol + '@b')))
    assert info['exports'][0]['contexts'] == [
        'base:allocation', 'qemu:dirty-bitmap:a']


def test_a_snapshot_export_shows_what_changed_up_to_it(aio, vol):
    need('nbdinfo')
    extents = nbdinfo_map(aio, vol + '@b', 'qemu:dirty-bitmap:a')
    assert dirty_of(extents) == CHANGED_A


def test_bitmaps_that_do_not_exist_are_not_offered(aio, vol):
    need('nbdinfo')
    for export, context in ((vol, 'qemu:dirty-bitmap:nope'),
                            (vol + '@b', 'qemu:dirty-bitmap:b'),
                            (vol + '@a', 'qemu:dirty-bitmap:a')):
        r = run_failing('nbdinfo', '--map=%s' % context, uri(aio, export))
        assert 'does not support metadata context' in r, r


def run_failing(*cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0, r.stdout
    return r.stdout + r.stderr


def test_qemu_img_map_with_x_dirty_bitmap_agrees(aio, vol):
    """In qemu's x-dirty-bitmap mode, block status reports the bitmap in
    place of base:allocation: a dirty range is "data": false."""
    need('qemu-img')
    opts = ('driver=nbd,server.type=inet,server.host=127.0.0.1,'
            'server.port=%d,export=%s,x-dirty-bitmap=qemu:dirty-bitmap:a'
            % (aio.nbd_port, vol))
    out = json.loads(run('qemu-img', 'map', '--output=json', '--image-opts',
                         opts))
    pos, dirty = 0, []
    for e in out:
        assert e['start'] == pos
        pos += e['length']
        if not e['data']:
            if dirty and sum(dirty[-1]) == e['start']:
                dirty[-1] = (dirty[-1][0], dirty[-1][1] + e['length'])
            else:
                dirty.append((e['start'], e['length']))
    assert pos == SIZE
    assert dirty == CHANGED_A + [(14 * MiB, 4 * KiB)]


# --- a client by hand --------------------------------------------------------

class Client:
    """Fixed newstyle, structured replies, SET_META_CONTEXT, GO (unless
    not ``go``)."""

    def __init__(self, aio, export, queries, go=True):
        self.s = socket.create_connection(('127.0.0.1', aio.nbd_port),
                                          timeout=30)
        self.recv(18)
        self.s.sendall(struct.pack('>I', p.FLAG_C_FIXED_NEWSTYLE |
                                   p.FLAG_C_NO_ZEROES))
        assert self.option(p.OPT_STRUCTURED_REPLY) == []
        self.contexts = {}  # id -> name
        for _, data in self.option(p.OPT_SET_META_CONTEXT,
                                   p.encode_meta_context(export, queries)):
            (cid,) = struct.unpack_from('>I', data)
            assert cid not in self.contexts
            self.contexts[cid] = data[4:].decode()
        if go:
            self.option(p.OPT_GO, p.encode_info(export, []))

    def recv(self, n):
        return self.s.recv(n, socket.MSG_WAITALL) if n else b''

    def option(self, option, data=b''):
        """The NBD_REP_META_CONTEXT/INFO replies before the ACK."""
        self.s.sendall(p.OPTION.pack(p.IHAVEOPT, option, len(data)) + data)
        got = []
        while True:
            _, _, rtype, n = p.OPTION_REPLY.unpack(self.recv(20))
            data = self.recv(n)
            if rtype == p.REP_ACK:
                return got
            assert rtype in (p.REP_META_CONTEXT, p.REP_INFO), (rtype, data)
            got.append((rtype, data))

    def block_status(self, offset, length, flags=0, handle=5):
        """{context name: [(length, flags)]}, or (error, message)."""
        self.s.sendall(p.REQUEST.pack(p.REQUEST_MAGIC, flags,
                                      p.CMD_BLOCK_STATUS, handle, offset,
                                      length))
        out = {}
        while True:
            _, rflags, rtype, h, n = p.STRUCTURED_REPLY.unpack(
                self.recv(20))
            data = self.recv(n)
            assert h == handle
            if rtype == p.REPLY_TYPE_ERROR:
                err, mlen = struct.unpack_from('>IH', data)
                assert rflags & p.REPLY_FLAG_DONE
                return err, data[6:6 + mlen].decode()
            assert rtype == p.REPLY_TYPE_BLOCK_STATUS
            (cid,) = struct.unpack_from('>I', data)
            name = self.contexts[cid]
            assert name not in out  # one chunk per context
            out[name] = [struct.unpack_from('>II', data, at)
                         for at in range(4, n, 8)]
            if rflags & p.REPLY_FLAG_DONE:
                return out

    def read(self, offset, length, handle=6):
        self.s.sendall(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_READ,
                                      handle, offset, length))
        _, rflags, rtype, h, n = p.STRUCTURED_REPLY.unpack(self.recv(20))
        assert (rtype, h) == (p.REPLY_TYPE_OFFSET_DATA, handle)
        return self.recv(n)[8:]

    def close(self):
        self.s.close()


def spans(extents, offset=0, bit=1):
    """[(offset, length)] of the extents with ``bit`` set."""
    out = []
    for n, f in extents:
        if f & bit:
            if out and sum(out[-1]) == offset:
                out[-1] = (out[-1][0], out[-1][1] + n)
            else:
                out.append((offset, n))
        offset += n
    return out


def test_base_allocation_and_bitmaps_in_one_session(aio, vol):
    c = Client(aio, vol, ['base:allocation', 'qemu:dirty-bitmap:a',
                          'qemu:dirty-bitmap:b', 'qemu:dirty-bitmap:nope'])
    try:
        assert sorted(c.contexts.values()) == [
            'base:allocation', 'qemu:dirty-bitmap:a', 'qemu:dirty-bitmap:b']
        got = c.block_status(0, SIZE)
        assert spans(got['qemu:dirty-bitmap:a']) == CHANGED_A + [
            (14 * MiB, 4 * KiB)]
        assert spans(got['qemu:dirty-bitmap:b']) == [(14 * MiB, 4 * KiB)]
        # base:allocation as without the bitmaps: the discarded range
        # and what was never written are holes.
        holes = spans(got['base:allocation'], bit=p.STATE_HOLE)
        assert holes == [(2 * MiB, 256 * KiB), (8 * MiB, 4 * MiB),
                         (12 * MiB + 4 * KiB, 2 * MiB - 4 * KiB),
                         (14 * MiB + 4 * KiB, 2 * MiB - 4 * KiB)]
        # REQ_ONE: one extent per context, within the request.
        got = c.block_status(MiB + 4 * KiB, MiB, p.CMD_FLAG_REQ_ONE)
        assert got == {'base:allocation': [(MiB - 4 * KiB, 0)],
                       'qemu:dirty-bitmap:a': [(60 * KiB, 1)],
                       'qemu:dirty-bitmap:b': [(MiB, 0)]}
        # Unaligned requests are answered within their bounds.
        got = c.block_status(5120100, 100)
        assert got['qemu:dirty-bitmap:a'] == [(100, 1)]
    finally:
        c.close()


def test_a_snapshot_deleted_in_a_session_fails_its_requests(aio):
    need('qemu-io')
    vol = 'doomed'
    cl = aio.client()
    cl.create_volume(vol, SIZE, chunk_size=4 * MiB)
    cl.create_snapshot(vol, 'doomed')
    qemu_io('write -P 0x66 15M 4k', export=uri(aio, vol))
    c = Client(aio, vol, ['qemu:dirty-bitmap:doomed'])
    try:
        assert spans(c.block_status(0, SIZE)['qemu:dirty-bitmap:doomed']) \
            == [(15 * MiB, 4 * KiB)]
        cl.delete_snapshot('%s@doomed' % vol)
        time.sleep(bitmaps.SNAPSHOT_RECHECK + 0.2)
        err, msg = c.block_status(0, SIZE)
        assert err == p.NBD_EINVAL
        assert 'snapshot doomed was deleted' in msg, msg
        # The session goes on: reads are served.
        assert c.read(15 * MiB, 4) == b'\x66' * 4
        assert c.block_status(0, SIZE)[0] == p.NBD_EINVAL
    finally:
        c.close()


def test_a_gateway_signing_as_its_host_principal(make_cluster, tmp_path):
    """ursa-nbd as a hypervisor runs it: its host principal's role reads
    a snapshot by name (SET_META_CONTEXT, the check that it still
    exists), and only a client naming the attachment's token sees the
    bitmap."""
    need('qemu-io')
    need('nbdinfo')
    from tests.functional.nbd.test_host_principal import host_principal
    from tests.functional.nbd.test_security import SAFE
    c = make_cluster(1, extra_conf=SAFE)
    host, _ = host_principal(c, tmp_path)
    admin = c.client()
    c.start_nbd()
    admin.create_volume('hv', SIZE, replicas=1, min_replicas=1,
                        chunk_size=4 * MiB)
    name = 'hv~%s' % admin.attach('hv', host)['export_token']
    qemu_io('write -P 0x11 0 8M', export=uri(c, name))
    admin.create_snapshot('hv', 'a')
    qemu_io(*AFTER_A, export=uri(c, name))
    extents = nbdinfo_map(c, name, 'qemu:dirty-bitmap:a')
    assert dirty_of(extents) == CHANGED_A
    # Its role lists the volume's snapshots: the contexts are listed.
    info = json.loads(run('nbdinfo', '--json', uri(c, name)))
    assert info['exports'][0]['contexts'] == [
        'base:allocation', 'qemu:dirty-bitmap:a']
    # Without the token over TCP: nothing offered (nor served).
    cl = Client(c, 'hv', ['qemu:dirty-bitmap:a', 'base:allocation'],
                go=False)
    assert list(cl.contexts.values()) == ['base:allocation']
    cl.close()
    cl = Client(c, name, ['qemu:dirty-bitmap:a'])
    try:
        admin.delete_snapshot('hv@a')
        time.sleep(bitmaps.SNAPSHOT_RECHECK + 0.2)
        assert cl.block_status(0, SIZE)[0] == p.NBD_EINVAL
    finally:
        cl.close()

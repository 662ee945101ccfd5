"""ursa-attach without FUSE or a cluster: the file system's operations on
in-memory volumes, and the agent reconciling a fake master's attachments
with the volumes it holds open."""

import errno

import mfusepy
import pytest

from cinder_ursa import exception
from cinder_ursa.attach import agent as agent_mod


class FakeVolume:
    def __init__(self, size, fail=False, lease='eager'):
        self.size = size
        self.data = bytearray(size)
        self.fail = fail
        self.flushes = 0
        self.closed = False
        self.lease = lease
        self.handovers = 0
        self.handing = None     # an Event hand_over waits for

    def _check(self):
        if self.fail:
            raise exception.UrsaError('disk on fire')

    def read(self, offset, size):
        self._check()
        return bytes(self.data[offset:offset + size])

    def write(self, offset, data):
        self._check()
        self.data[offset:offset + len(data)] = data

    def flush(self):
        self._check()
        self.flushes += 1

    def close(self):
        self.flush()
        self.closed = True

    def hand_over(self):
        if self.handing is not None:
            assert self.handing.wait(10)
        self._check()
        self.flush()
        self.handovers += 1
        return True


class FakeCluster:
    def __init__(self, refuse=()):
        self.opened = {}
        self.refuse = set(refuse)

    def open_volume(self, ref, writable, holder, lease):
        assert writable and holder == 'ursa-attach@h1'
        if ref in self.refuse:
            raise exception.UrsaError('lease held by someone else')
        self.opened[ref] = FakeVolume(1 << 20, lease=lease)
        return self.opened[ref]


class FakeMaster:
    def __init__(self):
        self.rows = []
        self.reports = []
        self.detached = []

    def attachments(self, host):
        assert host == 'h1'
        return list(self.rows)

    def update_attachment(self, vid, host, status, path, error):
        self.reports.append((vid, status, path, error))
        for r in self.rows:
            if r['volume_id'] == vid:
                r['status'] = status

    def detach(self, vid, host):
        self.detached.append(vid)
        self.rows = [r for r in self.rows if r['volume_id'] != vid]


def row(vid, status='attaching'):
    return {'volume_id': vid, 'volume_name': 'vol-' + vid, 'status': status}


def test_files_read_write_and_sync_their_volume():
    fs = agent_mod.AttachFS()
    vol = FakeVolume(8192)
    fs.add('v', vol)
    assert fs.readdir('/', None) == ['.', '..', 'v']
    st = fs.getattr('/v')
    assert st['st_size'] == 8192 and st['st_blocks'] == 16
    assert fs.write('/v', b'abc', 4094, None) == 3
    assert fs.read('/v', 10, 4093, None) == b'\0abc' + bytes(6)
    # Reads stop at the end; writes past it are refused.
    assert fs.read('/v', 100, 8190, None) == bytes(2)
    assert fs.read('/v', 100, 8192, None) == b''
    with pytest.raises(mfusepy.FuseOSError) as ei:
        fs.write('/v', b'xy', 8191, None)
    assert ei.value.errno == errno.ENOSPC
    assert fs.truncate('/v', 0) == 0 and fs.getattr('/v')['st_size'] == 8192
    fs.fsync('/v', True, None)
    assert vol.flushes == 1
    with pytest.raises(mfusepy.FuseOSError) as ei:
        fs.getattr('/gone')
    assert ei.value.errno == errno.ENOENT
    assert fs.remove('v') is vol and fs.readdir('/', None) == ['.', '..']


def test_files_belong_to_the_configured_owner_and_group():
    # Unset group: root's files, the owner alone (0600).
    assert agent_mod.file_owner() == (0, 0, 0o600)
    assert agent_mod.file_owner('root', '') == (0, 0, 0o600)
    # A group: its members too (0660); names or numbers.
    assert agent_mod.file_owner('4343', '4242') == (4343, 4242, 0o660)
    assert agent_mod.file_owner('nobody', 'root') == (65534, 0, 0o660)
    for owner, group, what in (('no-such-user', None, 'owner'),
                               ('root', 'no-such-group', 'group')):
        with pytest.raises(ValueError, match=r'\[ursa_attach\] %s: no '
                           % what):
            agent_mod.file_owner(owner, group)
    fs = agent_mod.AttachFS(4343, 4242, 0o660)
    fs.add('v', FakeVolume(4096))
    st = fs.getattr('/v')
    assert (st['st_uid'], st['st_gid'], st['st_mode']) == (
        4343, 4242, 0o100660)
    # The directory stays root's, listable by all.
    st = fs.getattr('/')
    assert (st['st_uid'], st['st_gid'], st['st_mode']) == (0, 0, 0o40755)
    assert not fs.exit()  # not mounted: nothing to end


def test_volume_errors_are_eio():
    fs = agent_mod.AttachFS()
    fs.add('v', FakeVolume(4096, fail=True))
    for op in (lambda: fs.read('/v', 10, 0, None),
               lambda: fs.write('/v', b'x', 0, None),
               lambda: fs.fsync('/v', True, None)):
        with pytest.raises(mfusepy.FuseOSError) as ei:
            op()
        assert ei.value.errno == errno.EIO


def make_agent(cluster=None):
    master = FakeMaster()
    agent = agent_mod.Agent(master, cluster or FakeCluster(),
                            agent_mod.AttachFS(), 'h1', '/mnt/ursa')
    return agent, master


def test_attaching_volumes_are_opened_and_reported_attached():
    agent, master = make_agent()
    master.rows = [row('1'), row('2', 'attached')]
    agent.reconcile()
    assert sorted(agent.fs.volumes) == ['vol-1', 'vol-2']
    assert ('1', 'attached', '/mnt/ursa/vol-1', None) in master.reports
    # Already open: nothing more happens.
    agent.reconcile()
    assert len(master.reports) == 2


def test_a_volume_that_cannot_be_opened_is_reported_in_error():
    agent, master = make_agent(FakeCluster(refuse={'1'}))
    master.rows = [row('1')]
    agent.reconcile()
    assert agent.fs.volumes == {}
    assert master.reports == [('1', 'error', None,
                               'lease held by someone else')]
    # An attachment in error is not retried.
    agent.reconcile()
    assert len(master.reports) == 1


def test_detaching_flushes_closes_and_deletes_the_attachment():
    cluster = FakeCluster()
    agent, master = make_agent(cluster)
    master.rows = [row('1')]
    agent.reconcile()
    master.rows[0]['status'] = 'detaching'
    agent.reconcile()
    vol = cluster.opened['1']
    assert vol.closed and vol.flushes == 1
    assert master.detached == ['1'] and agent.fs.volumes == {}


def test_a_volume_whose_attachment_vanished_is_closed():
    cluster = FakeCluster()
    agent, master = make_agent(cluster)
    master.rows = [row('1'), row('2')]
    agent.reconcile()
    master.rows = [row('2', 'attached')]
    agent.reconcile()
    assert cluster.opened['1'].closed and not cluster.opened['2'].closed
    assert sorted(agent.fs.volumes) == ['vol-2']
    agent.close_all()
    assert cluster.opened['2'].closed and agent.fs.volumes == {}


def test_a_standby_opens_on_write_and_a_source_hands_over_when_asked():
    """A live migration: the destination's standby attachment is opened
    without the lease; the source's volume is handed over when its
    attachment says release_requested, in a thread that keeps no other
    attachment waiting, once at a time."""
    import threading
    cluster = FakeCluster()
    agent, master = make_agent(cluster)
    master.rows = [row('1'), dict(row('2'), standby=True)]
    agent.reconcile()
    assert (cluster.opened['1'].lease, cluster.opened['2'].lease) == (
        'eager', 'on-write')
    # Asked to release volume 1; its hand_over takes a while.
    cluster.opened['1'].handing = threading.Event()
    master.rows[0]['release_requested'] = True
    master.rows.append(row('3'))
    agent.reconcile()
    agent.reconcile()                   # not started twice
    assert 'vol-3' in agent.fs.volumes  # the others went on meanwhile
    cluster.opened['1'].handing.set()
    agent._handing['vol-1'].join(10)
    assert cluster.opened['1'].handovers == 1
    assert cluster.opened['1'].flushes == 1
    assert not cluster.opened['2'].handovers
    # A failed one is counted, and tried again while asked.
    cluster.opened['1'].fail = True
    agent.reconcile()
    agent._handing['vol-1'].join(10)
    cluster.opened['1'].fail = False
    agent.reconcile()
    agent._handing['vol-1'].join(10)
    assert cluster.opened['1'].handovers == 2
    ops = agent.fs.metrics._ops
    assert ops.labels('handover', 'ok')._value.get() == 2
    assert ops.labels('handover', 'error')._value.get() == 1

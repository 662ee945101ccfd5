"""Bit rot is found by the scrub and repaired from a valid replica.

Bytes of chunk files are flipped on disk behind the chunk servers (the
page cache they read), in the head and in snapshot layers, on several
replicas of several chunks: the deep scrub, with an interval of a few
seconds, finds every one within a pass and repairs it from a replica
that holds it valid; a block whose only copy rotted is reported and left
as it is; more rot in one pass than ``scrub_error_limit`` fails the data
directory (its chunks are copied elsewhere).  A read that meets a bad
block gets the right data from another replica, and the bad copy is
repaired behind it.  The light scrub, which reads no data, finds a
replica rewritten at the same epoch with a matching CRC.
"""

import glob
import json
import os
import random
import signal
import struct
import threading

from cinder_ursa.chunkserver.store import mending
from cinder_ursa.client import check
from cinder_ursa.common import checksum
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import replica_sets
from tests.fixtures.cluster import server_id
from tests.fixtures.cluster import server_index
from tests.fixtures.cluster import ursa
from tests.fixtures.wait import wait_for

MiB = 1024 * 1024
BS = 4096
INTERVAL = 6          # s: scrub_interval of these tests
CHUNKS = 4


def _conf(scrub=INTERVAL, light=0, limit=16):
    return ('[ursa_chunkserver]\nscrub_interval = %d\n'
            'light_scrub_interval = %d\nscrub_error_limit = %d\n'
            % (scrub, light, limit))


def _path(cluster, sid, vid, index, layer=0, ext='.data'):
    base = os.path.join(cluster.cs_dir(server_index(cluster, sid)),
                        'chunks', vid, str(index))
    return base + ('.s%d' % layer if layer else '') + ext


def _layers(cluster, sid, vid, index):
    """The snapshot layers a replica holds (their sequences)."""
    pattern = _path(cluster, sid, vid, index, ext='') + '.s*.meta'
    return sorted(int(p.rsplit('.s', 1)[1][:-5]) for p in glob.glob(pattern))


def _flip(cluster, sid, vid, index, block, layer=0):
    """Flip one byte of a block's data: the rot of a disk."""
    path = _path(cluster, sid, vid, index, layer)
    at = block * BS + random.randrange(BS)
    fd = os.open(path, os.O_RDWR)
    try:
        byte = os.pread(fd, 1, at)
        os.pwrite(fd, bytes([byte[0] ^ 0x5a]), at)
    finally:
        os.close(fd)


def _rotten(cluster, vid):
    """[(server, file, block)] of every block on disk, in every replica's
    head and layers, whose data does not match its CRC."""
    out = []
    for i in range(cluster.n):
        for meta in sorted(glob.glob(os.path.join(
                cluster.cs_dir(i), 'chunks', vid, '*.meta'))):
            with open(meta, 'rb') as f:
                entries = f.read()
            with open(meta[:-5] + '.data', 'rb') as f:
                data = f.read()
            n = len(entries) // 8
            data += bytes(n * BS - len(data))
            out.extend((server_id(cluster, i), os.path.basename(meta), b)
                       for b in mending.torn_blocks(entries, data[:n * BS]))
    return out


def _scrub(cluster):
    return cluster.client().cluster_status()['scrub']


def _passes(cluster):
    """{server: scrub passes ended}, once every server reported one."""
    servers = wait_for(lambda: len(_scrub(cluster)['servers']) ==
                       cluster.n and _scrub(cluster)['servers'], 10,
                       'every chunk server to report its scrub')
    return {sid: s['passes'] for sid, s in servers.items()}


def _pass_after(cluster, before):
    """Wait until every chunk server ended a whole scrub pass after
    ``before`` (from :func:`_passes`: the one running then may have
    started before); the cluster's scrub status then."""
    def done():
        sc = _scrub(cluster)
        if all(sc['servers'][sid]['passes'] >= n + 2
               for sid, n in before.items()):
            return sc
        return None
    return wait_for(done, 4 * INTERVAL, 'a scrub pass of every server '
                    'started after the rot', interval=0.2)


def _fill(cluster, name='v', replicas=3, snapshot=True):
    """A volume of CHUNKS chunks of random data; with ``snapshot``, a
    snapshot of it, then its first two chunks rewritten (their old
    blocks go to a layer).  (id, head bytes, snapshot bytes)."""
    rng = random.Random(name)
    vid = cluster.client().create_volume(
        name, CHUNKS * MiB, chunk_size=MiB, replicas=replicas,
        min_replicas=min(replicas, 2))['id']
    old = rng.randbytes(CHUNKS * MiB)
    with data_client(cluster) as cl:
        with cl.open_volume(name) as v:
            v.write(0, old)
            v.flush()
        if not snapshot:
            return vid, old, None
        cl.create_snapshot(name, 's')
        new = rng.randbytes(2 * MiB)
        with cl.open_volume(name) as v:
            v.write(0, new)
            v.flush()
    return vid, new + old[2 * MiB:], old


def _read(cluster, ref, size=CHUNKS * MiB):
    with data_client(cluster) as cl:
        with cl.open_volume(ref, writable=False) as v:
            return v.read(0, size)


def _deep_check(cluster, vid):
    with data_client(cluster) as cl:
        return cl.run(lambda c: check.check_volume(c, vid, deep=True))


def _rot(cluster, vid):
    """Flip blocks of two replicas of every chunk (the primary among them
    for half of them), two each in the head, never the same block on two
    replicas (one's repair would mend the other's), and one in the
    snapshot layer of a third replica of the chunks rewritten since the
    snapshot; [(server, chunk, layer, block)] flipped."""
    sets = replica_sets(cluster, 'v')
    assert all(len(ids) == 3 for ids in sets.values()), sets
    rng = random.Random(19)
    flipped = set()
    for index in range(CHUNKS):
        blocks = rng.sample(range(256), 4)
        for n, k in enumerate((index % 2, 2)):
            for block in blocks[2 * n:2 * n + 2]:
                flipped.add((sets[index][k], index, 0, block))
        if index < 2:
            sid = sets[index][(index + 1) % 3]
            layer = _layers(cluster, sid, vid, index)
            assert layer, 'no snapshot layer on server %d' % sid
            flipped.add((sid, index, layer[-1], rng.randrange(256)))
    for sid, index, layer, block in flipped:
        _flip(cluster, sid, vid, index, block, layer)
    return flipped


def test_deep_scrub_finds_and_repairs_rot_in_heads_and_layers(
        make_cluster):
    cluster = make_cluster(3, extra_conf=_conf(limit=64))
    vid, head, snap = _fill(cluster)
    flipped = _rot(cluster, vid)
    before = _passes(cluster)
    # The flips made rot (a pass running meanwhile may have repaired
    # some already: every flip is counted below as found).
    assert 0 < len(_rotten(cluster, vid)) <= len(flipped)
    sc = _pass_after(cluster, before)
    # Every flip found, within one pass, and repaired from a good replica.
    assert sc['bad_blocks_found'] == len(flipped), sc
    assert sc['bad_blocks_repaired'] == len(flipped), sc
    assert sc['bad_blocks_unrepaired'] == 0, sc
    assert _rotten(cluster, vid) == []
    report = _deep_check(cluster, vid)
    assert report['problems'] == [], report
    r = ursa(cluster.data_dir, 'volume', 'check', '--deep', 'v')
    assert r.returncode == 0, r.stdout + r.stderr
    assert _read(cluster, 'v') == head
    assert _read(cluster, 'v@s') == snap
    # Shown to the operator.
    out = ursa(cluster.data_dir, 'cluster', 'status', '-f', 'value',
               '-c', 'scrub_bad_blocks').stdout
    assert 'found %d, repaired %d, unrepaired 0' % (
        len(flipped), len(flipped)) in out, out


def test_rot_in_the_only_copy_is_reported_not_rewritten(make_cluster):
    cluster = make_cluster(1, extra_conf=_conf())
    vid, head, _ = _fill(cluster, replicas=1, snapshot=False)
    sid = server_id(cluster, 0)
    _flip(cluster, sid, vid, 1, 7)
    with open(_path(cluster, sid, vid, 1), 'rb') as f:
        rotten = f.read()
    sc = _pass_after(cluster, _passes(cluster))
    # Found (again by each pass), never repaired.
    assert sc['bad_blocks_found'] >= 1, sc
    assert sc['bad_blocks_repaired'] == 0, sc
    assert sc['bad_blocks_unrepaired'] == sc['bad_blocks_found'], sc
    assert any('only copy' in e for e in sc['errors']), sc['errors']
    # Left exactly as it was, data and CRC: never "repaired" blindly.
    with open(_path(cluster, sid, vid, 1), 'rb') as f:
        assert f.read() == rotten
    assert len(_rotten(cluster, vid)) == 1
    out = ursa(cluster.data_dir, 'cluster', 'status', '-f', 'value',
               '-c', 'scrub_errors').stdout
    assert 'only copy' in out, out


def test_more_rot_than_the_limit_fails_the_data_directory(make_cluster):
    cluster = make_cluster(4, extra_conf=_conf(limit=3) + (
        '[ursa_master]\nreplica_grace = 3600\n'))
    vid, _, _ = _fill(cluster, snapshot=False)
    sets = replica_sets(cluster, 'v')
    sick = sets[0][1]
    # Five bad blocks in one step of the scrub (the first 512 KiB of a
    # chunk), so one pass finds them all wherever it is when they rot.
    for block in (10, 20, 30, 40, 50):
        _flip(cluster, sick, vid, 0, block)
    # The master marks it failed, and copies its chunks elsewhere at
    # once (not after replica_grace).
    def failed():
        s = next(s for s in cluster.client().servers() if s['id'] == sick)
        return s if s['state'] == 'failed' else None
    failure = wait_for(failed, 4 * INTERVAL, 'the data directory to be '
                       'quarantined', interval=0.2).get('failure', '')
    assert 'scrub_error_limit' in failure, failure

    def copied():
        s = replica_sets(cluster, 'v')
        return all(sick not in ids and len(ids) == 3 for ids in s.values())
    wait_for(copied, 40, 'the failed directory\'s chunks to be copied',
             interval=0.5)
    log = open(os.path.join(cluster.data_dir, 'cs%d.log' % server_index(
        cluster, sick))).read()
    assert 'QUARANTINED' in log


def test_a_read_that_meets_rot_gets_good_data_and_repairs_it(make_cluster):
    cluster = make_cluster(3, extra_conf=_conf(scrub=0))
    vid, head, snap = _fill(cluster)
    sets = replica_sets(cluster, 'v')
    # Every replica of chunk 0 rotten in one block each, head and layer:
    # whichever a read goes to, some fail.
    for k, sid in enumerate(sets[0]):
        _flip(cluster, sid, vid, 0, 3 * k)
        layer = _layers(cluster, sid, vid, 0)[-1]
        _flip(cluster, sid, vid, 0, 3 * k + 1, layer)
    for _ in range(3):
        assert _read(cluster, 'v', MiB) == head[:MiB]
        assert _read(cluster, 'v@s', MiB) == snap[:MiB]
    wait_for(lambda: _rotten(cluster, vid) == [], 20,
             lambda: 'the rotten copies to be repaired: %s'
             % _rotten(cluster, vid), interval=0.2)
    assert _deep_check(cluster, vid)['problems'] == []


def _forge(cluster, sid, vid, index, block, data):
    """Rewrite a replica's block and its CRC consistently (same epoch):
    no CRC check can see it."""
    with open(_path(cluster, sid, vid, index), 'r+b') as f:
        f.seek(block * BS)
        f.write(data)
    with open(_path(cluster, sid, vid, index, ext='.meta'), 'r+b') as f:
        f.seek(block * 8)
        _, word = struct.unpack('!II', f.read(8))
        f.seek(block * 8)
        f.write(struct.pack('!II', checksum.crc(data), word))


def test_light_scrub_makes_a_diverged_replica_identical(make_cluster):
    cluster = make_cluster(3, extra_conf=_conf(scrub=0, light=3))
    vid, head, _ = _fill(cluster, snapshot=False)
    sets = replica_sets(cluster, 'v')
    odd = sets[2][1]
    _forge(cluster, odd, vid, 2, 5, b'forged!!' * 512)
    assert _rotten(cluster, vid) == []

    def fixed():
        with open(_path(cluster, odd, vid, 2), 'rb') as f:
            f.seek(5 * BS)
            return f.read(BS) == head[2 * MiB + 5 * BS:2 * MiB + 6 * BS]
    wait_for(fixed, 20, 'the light scrub to repair the forged block',
             interval=0.2)
    # Counted and shown (with the next heartbeat).
    wait_for(lambda: _scrub(cluster)['light_blocks_made_identical'] >= 1,
             5, 'the light scrub\'s repair to be reported')
    assert _read(cluster, 'v') == head
    assert _deep_check(cluster, vid)['problems'] == []


def _cursor(cluster, i=0):
    with open(os.path.join(cluster.cs_dir(i), 'scrub-cursor')) as f:
        return json.load(f)


def test_a_restarted_server_goes_on_with_its_pass(make_cluster):
    # 48 MiB over 16 s: a pass of about 12 s, stopped in its middle.
    cluster = make_cluster(1, extra_conf=_conf(scrub=16))
    cluster.client().create_volume('v', 48 * MiB, chunk_size=16 * MiB,
                                   replicas=1, min_replicas=1)
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            for at in range(0, 48 * MiB, 8 * MiB):
                v.write(at, random.randbytes(8 * MiB))
            v.flush()
    sid = str(server_id(cluster, 0))

    def a_quarter():
        s = _scrub(cluster)['servers'].get(sid) or {}
        return (s.get('bytes_total', 0) >= 48 * MiB and
                s['state'] == 'scrubbing' and s['bytes_done'] >= 12 * MiB)
    wait_for(a_quarter, 30, 'a pass of the whole volume to be a quarter '
             'through', interval=0.2)
    cluster.kill_chunkserver(0, signal.SIGTERM)
    stopped = _cursor(cluster)
    assert 12 * MiB <= stopped['bytes_done'] < 48 * MiB, stopped
    assert stopped['position'] is not None
    cluster.start_chunkserver(0)

    def ended():
        c = _cursor(cluster)
        return c if c['passes'] > stopped['passes'] else None
    done = wait_for(ended, 40, 'the resumed pass to end', interval=0.2)
    # The same pass, gone on from where it stopped: every byte counted
    # once.
    assert done['pass_started'] == stopped['pass_started']
    assert done['bytes_done'] == done['bytes_total'], done
    log = open(os.path.join(cluster.data_dir, 'cs0.log')).read()
    assert log.count('Scrub pass %d ' % done['passes']) == 1


def test_reads_during_the_scrub_and_its_repairs_get_good_data(
        make_cluster):
    """Clients read the volume and its snapshot all along while the scrub
    finds and repairs rot (and their reads repair some of it first): no
    read ever returns anything but the data written."""
    cluster = make_cluster(3, extra_conf=_conf(limit=64))
    vid, head, snap = _fill(cluster)
    stop, reads, wrong, errors = threading.Event(), [0], [], []

    def reader():
        try:
            with data_client(cluster) as cl:
                with cl.open_volume('v', writable=False) as v, \
                        cl.open_volume('v@s', writable=False) as s:
                    while not stop.is_set():
                        for vol, want in ((v, head), (s, snap)):
                            at = random.randrange(CHUNKS * 16 - 3) * 65536
                            if vol.read(at, 256 * 1024) != \
                                    want[at:at + 256 * 1024]:
                                wrong.append(at)
                            reads[0] += 1
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    t = threading.Thread(target=reader)
    t.start()
    try:
        flipped = _rot(cluster, vid)
        sc = _pass_after(cluster, _passes(cluster))
    finally:
        stop.set()
        t.join(30)
    assert not errors, errors
    assert reads[0] > 50 and wrong == [], (reads, wrong)
    # Whatever the reads left to it, the scrub found and repaired.
    assert 0 < sc['bad_blocks_found'] <= len(flipped), sc
    assert sc['bad_blocks_unrepaired'] == 0, sc
    assert _rotten(cluster, vid) == []
    assert _read(cluster, 'v') == head
    assert _read(cluster, 'v@s') == snap

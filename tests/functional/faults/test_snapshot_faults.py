"""Chunk servers killed and restarted in the middle of snapshot, clone,
flatten and snapshot-delete operations: no half-made snapshot is ever
visible, every snapshot that was reported created holds the volume at one
instant, and ``ursa cluster check`` finds no leaked space afterwards."""

import json
import os
import shutil
import signal
import threading
import time

from cinder_ursa import exception
from cinder_ursa.client import check
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import server_id
from tests.fixtures.cluster import ursa
from tests.fixtures.wait import wait_for

MiB = 1024 * 1024
BLOCK = 4096
NBLOCKS = 512  # 2 MiB of the volume are written


def _writer(vol, stop, log):
    value = 0
    while not stop.is_set():
        value += 1
        block = (value * 7) % NBLOCKS
        sent = time.monotonic()
        vol.write(block * BLOCK, value.to_bytes(8, 'big') * (BLOCK // 8))
        log.append((sent, time.monotonic(), block, value))


def _assert_instant(cl, ref, before, after, log):
    """Snapshot ``ref`` has every write acknowledged before ``before`` and
    none sent after ``after``."""
    with cl.open_volume(ref, writable=False) as s:
        data = s.read(0, NBLOCKS * BLOCK)
    seen = [int.from_bytes(data[b * BLOCK:b * BLOCK + 8], 'big')
            for b in range(NBLOCKS)]
    for sent, acked, block, value in log:
        if acked < before:
            assert seen[block] >= value, '%s lost write %d' % (ref, value)
        if sent > after:
            assert seen[block] < value, '%s holds later write %d' % (ref,
                                                                     value)
    return data


def _cluster_check(cluster):
    r = ursa(cluster.data_dir, 'cluster', 'check', '-f', 'json',
             check=False)
    return r.returncode, json.loads(r.stdout or '[]'), r.stderr


def test_kills_mid_snapshot_clone_flatten_delete_leave_nothing_behind(
        make_cluster):
    cluster = make_cluster(4)
    master = cluster.client()
    master.create_volume('src', 8 * MiB, chunk_size=MiB)
    made, refused = {}, []
    stop = threading.Event()
    log = []
    with data_client(cluster, io_timeout=60.0) as cl:
        with cl.open_volume('src') as v:
            t = threading.Thread(target=_writer, args=(v, stop, log))
            t.start()
            try:
                for i in range(24):
                    if i == 4:
                        cluster.kill_chunkserver(1)
                    if i == 14:
                        cluster.start_chunkserver(1)
                    before = time.monotonic()
                    try:
                        cl.create_snapshot('src', 's%d' % i)
                        made['s%d' % i] = (before, time.monotonic())
                    except exception.Unavailable:
                        refused.append('s%d' % i)
                    # No snapshot is ever seen half-made.
                    states = {s['name']: s['status']
                              for s in master.snapshots('src')}
                    assert states == dict.fromkeys(made, 'available')
                    time.sleep(0.3)
            finally:
                stop.set()
                t.join()
        assert log and made and refused, (len(log), made, refused)
        contents = {name: _assert_instant(cl, 'src@' + name, b, a, log)
                    for name, (b, a) in made.items()}

        # Clone, then flatten while a chunk server dies; the flatten is
        # resumable: run it again after the restart.
        base = sorted(made, key=lambda n: made[n][0])[-1]
        cl.clone('src@' + base, 'vm')
        done = threading.Event()
        errors = []

        def flatten():
            try:
                cl.flatten('vm', rate=8 * MiB)
            except exception.UrsaError as e:
                errors.append(e)
            done.set()
        ft = threading.Thread(target=flatten)
        ft.start()
        time.sleep(0.3)
        cluster.kill_chunkserver(2)
        ft.join()
        cluster.start_chunkserver(2)
        if errors or master.volume('vm')['parent']:
            cl.flatten('vm')
        assert not master.volume('vm')['parent']
        with cl.open_volume('vm', writable=False) as vm:
            assert vm.read(0, NBLOCKS * BLOCK) == contents[base]

        # Delete snapshots while a server is down: it frees their blocks
        # when it comes back.
        cluster.kill_chunkserver(3)
        for name in sorted(made)[:-1]:
            cl.delete_snapshot('src@' + name)
        cluster.start_chunkserver(3)
        last = sorted(made)[-1]
        _assert_instant(cl, 'src@' + last, *made[last], log)

        # Every replica of every volume agrees (layers included) once the
        # restarted server has freed the deleted snapshots' blocks (it
        # does so right after the master counts it up again) ...
        for vol in master.volumes():
            _wait_agreeing(cl, vol)
    # ... and nothing is held that no volume or snapshot can reach, once
    # the repair planner has copied again what a snapshot collection
    # raced (a copy abandoned half-way leaves a joining copy that is in
    # no replica set until the next copy promotes it).
    last = {}

    def clean():
        last['check'] = _cluster_check(cluster)
        return last['check'][:2] == (0, [])
    wait_for(clean, 60, lambda: 'a clean cluster check: %s' % (
        last['check'][1:],), interval=1.0)
    assert '4 chunk server(s)' in last['check'][2]


def _wait_agreeing(cl, vol):
    """Until every replica of ``vol`` agrees (degraded aside)."""
    report = {}

    def agrees():
        report.update(cl.run(check.check_volume, vol['id']))
        return not [p for p in report['problems']
                    if not p['problem'].startswith('degraded')]
    wait_for(agrees, 30, lambda: 'the replicas of %s to agree: %s'
             % (vol['name'], report), interval=0.5)


def test_cluster_check_finds_leaks(make_cluster):
    """The check is not blind: a replica of an unknown volume and a layer
    no snapshot reads are both reported (and the command exits 1)."""
    cluster = make_cluster(3)
    master = cluster.client()
    master.create_volume('v', 4 * MiB, chunk_size=MiB)
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            v.write(0, b'a' * 8192)
            cl.create_snapshot('v', 'one')
            v.write(0, b'b' * 8192)  # preserves 2 blocks into layer 1
            v.flush()
    assert _cluster_check(cluster)[:2] == (0, [])
    vol_id = master.volume('v')['id']
    # Forge what a lost GC would leave: a layer of a sequence no snapshot
    # has (registration's GC only looks at sequences the volume reached).
    cs0 = os.path.join(cluster.cs_dir(0), 'chunks')
    for ext in ('data', 'meta'):
        shutil.copy(os.path.join(cs0, vol_id, '0.s1.' + ext),
                    os.path.join(cs0, vol_id, '0.s7.' + ext))
    # A clean stop: after kill -9 the crash resync could copy the forged
    # layer to the other replicas (it compares every layer it holds).
    cluster.kill_chunkserver(0, signal.SIGTERM)
    cluster.start_chunkserver(0)
    rc, problems, _ = _cluster_check(cluster)
    assert rc == 1
    assert [(p['problem'], p['server'], p['index']) for p in problems] == [
        ('leaked snapshot layer', server_id(cluster, 0), 0)], problems

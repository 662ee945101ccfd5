"""A chunk server's disk fails under it (EIO on every read, write and
sync, from a FUSE filesystem that fails on demand): volumes keep serving
reads and writes from the other replicas, and the failed disk's replicas
leave the replica sets of the chunks written since."""

import os
import random
import shutil
import subprocess
import sys
import time

import pytest

from cinder_ursa.cmd.aio import AllInOne
from tests.functional.conftest import data_client
from tests.functional.test_faults import replica_sets
from tests.functional.test_faults import server_id

MiB = 1024 * 1024
CHUNKS = 24


@pytest.fixture
def faulty_disk(tmp_path):
    """(mountpoint, trigger): a directory on a disk that fails while
    ``trigger`` exists."""
    if not os.path.exists('/dev/fuse') or os.geteuid() != 0:
        if os.environ.get('CI'):
            pytest.fail('CI needs /dev/fuse and root for the failing disk')
        pytest.skip('needs /dev/fuse and root')
    backing, mount = tmp_path / 'disk', tmp_path / 'cluster' / 'cs0'
    trigger = tmp_path / 'disk-fails'
    backing.mkdir()
    mount.mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, '-m', 'tests.functional.faultydisk', str(backing),
         str(mount), str(trigger)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(__file__)))))
    deadline = time.monotonic() + 20
    while not os.path.ismount(mount):
        assert proc.poll() is None, 'the FUSE filesystem did not start'
        assert time.monotonic() < deadline, 'the FUSE mount did not appear'
        time.sleep(0.05)
    yield mount, trigger
    trigger.unlink(missing_ok=True)
    umount = shutil.which('fusermount3') or shutil.which('fusermount')
    subprocess.run([umount, '-u', str(mount)] if umount else
                   ['umount', str(mount)], check=False)
    proc.wait(timeout=20)


def test_failing_disk_reads_and_writes_go_on(tmp_path, faulty_disk):
    mount, trigger = faulty_disk
    cluster = AllInOne(str(tmp_path / 'cluster'), 3, port_base=0,
                       server_timeout=3.0)
    cluster.start()
    try:
        _exercise(cluster, trigger)
    finally:
        cluster.stop()


def _exercise(cluster, trigger):
    master = cluster.client()
    master.create_volume('v', CHUNKS * MiB, chunk_size=MiB)
    rng = random.Random(7)
    old = rng.randbytes(CHUNKS * MiB)
    new = rng.randbytes(CHUNKS * MiB)
    sick = server_id(cluster, 0)
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            v.write(0, old)
            v.flush()
        sets = replica_sets(cluster, 'v')
        assert all(sick in ids for ids in sets.values())
        # Exercise both roles: primary of some chunks, replica of others.
        assert any(ids[0] == sick for ids in sets.values())
        assert any(ids[0] != sick for ids in sets.values())

        trigger.touch()  # the disk dies
        with cl.open_volume('v') as v:
            assert v.read(0, CHUNKS * MiB) == old
            v.write(0, new)
            v.flush()
            assert v.read(0, CHUNKS * MiB) == new
    sets = replica_sets(cluster, 'v')
    assert all(sick not in ids and len(ids) == 2 for ids in sets.values()), \
        sets
    status = master.cluster_status()
    assert status['degraded_chunks'] == CHUNKS
    assert status['health'] == 'HEALTH_WARN'
    log = open(os.path.join(cluster.data_dir, 'cs0.log')).read()
    assert 'Input/output error' in log

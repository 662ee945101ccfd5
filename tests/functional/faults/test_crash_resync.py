"""After a crash, a chunk's replicas are compared and made identical before
the crashed copies serve reads: kill -9 of a primary during writes, then
of every process, leaves replicas with identical CRC lists and every
flushed write in place; a replica not compared yet answers no read."""

import hashlib
import os
import shutil
import signal
import subprocess
import sys

import pytest

from cinder_ursa import exception
from cinder_ursa.client import check
from cinder_ursa.protocol import codec
from tests.fixtures.cluster import data_client
from tests.fixtures.cluster import replica_sets
from tests.fixtures.cluster import server_index
from tests.fixtures.processes import ROOT
from tests.fixtures.wait import wait_for

MiB = 1024 * 1024
BS = 4096
SIZE = 16 * MiB


def _read_from(cluster, vid, chunk, server, block=0):
    """Read a block of ``chunk`` from one replica (its server id)."""
    r = next(r for r in chunk['replicas'] if r['id'] == server)

    async def read(c):
        conn = await c.pool.get(r['address'], r['port'])
        reply = await conn.request(7, codec.encode_read(
            7, vid, chunk['index'], chunk['epoch'], block * BS, BS), 30)
        return bytes(codec.reply_status(reply.body))
    with data_client(cluster) as cl:
        return cl.run(read)


def test_a_replica_not_compared_after_its_crash_serves_no_read(
        make_cluster):
    """A replica restarted after kill -9 while its chunk's primary is
    frozen cannot be compared with it: it refuses reads (the client reads
    another replica) until the primary thaws and the resync is done."""
    cluster = make_cluster(3, server_timeout=60.0)
    vid = cluster.client().create_volume('v', 4 * MiB,
                                         chunk_size=MiB)['id']
    with data_client(cluster) as cl:
        with cl.open_volume('v') as v:
            v.write(0, b'o' * BS)
            v.flush()
    chunk = cluster.client().chunk_map(vid, 0, 1)['chunks'][0]
    primary, replica = [r['id'] for r in chunk['replicas'][:2]]
    p, i = server_index(cluster, primary), server_index(cluster, replica)
    cluster.cs_procs[p].send_signal(signal.SIGSTOP)
    try:
        cluster.kill_chunkserver(i)
        cluster.start_chunkserver(i)
        with pytest.raises(exception.Unavailable, match='after a crash'):
            _read_from(cluster, vid, chunk, replica)
        # The client goes to another replica meanwhile.
        with data_client(cluster) as cl:
            with cl.open_volume('v', writable=False) as v:
                assert v.read(0, BS) == b'o' * BS
    finally:
        cluster.cs_procs[p].send_signal(signal.SIGCONT)

    def served():
        try:
            return _read_from(cluster, vid, chunk, replica)
        except exception.Unavailable:
            return None
    assert wait_for(served, 60, 'the replica compared and serving') == \
        b'o' * BS


WRITER = '''
import hashlib, os, random, sys
from cinder_ursa.client import sync
url, key_file, log = sys.argv[1:4]
key = open(key_file, 'rb').read().strip()
fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
rng = random.Random(7)
with sync.SyncCluster([url], key, io_timeout=60.0) as cl:
    with cl.open_volume('v') as v:
        k = 0
        while True:
            k += 1
            b = rng.randrange(%(blocks)d)
            data = hashlib.sha256(b'%%d:%%d' %% (b, k)).digest() * 128
            os.write(fd, b'W %%d %%d\\n' %% (b, k))
            try:
                v.write(b * 4096, data)
                if k %% 16 == 0:
                    v.flush()
                    os.write(fd, b'F %%d\\n' %% k)
            except Exception as e:
                os.write(fd, b'X %%d %%r\\n' %% (k, e))
                raise
''' % {'blocks': SIZE // BS}


def _block(b, k):
    return hashlib.sha256(b'%d:%d' % (b, k)).digest() * 128


def test_kill_9_of_the_primary_then_of_everything_loses_no_flushed_write(
        make_cluster, tmp_path):
    """A writer writes and flushes; the primary of some of its chunks is
    killed (the writer goes on, the chunks go on without it), then every
    process is, the writer too.  After a restart of everything, every
    chunk has its replicas back, their CRC lists are identical, and each
    block holds its last flushed write or one written after it."""
    cluster = make_cluster(3, server_timeout=2.0, extra_conf=(
        '[ursa_master]\nreplica_grace = 600\nrepair_interval = 0.3\n'))
    client = cluster.client()
    vid = client.create_volume('v', SIZE, chunk_size=MiB)['id']
    log = tmp_path / 'writes.log'
    writer = subprocess.Popen(
        [sys.executable, '-c', WRITER, cluster.master_url, cluster.key_file,
         str(log)], cwd=ROOT)
    try:
        wait_for(lambda: log.exists() and log.read_text().count('F ') >= 3,
                 60, 'the writer to flush')
        first = min(replica_sets(cluster, 'v').items())[1]
        victim = server_index(cluster, first[0])
        cluster.kill_chunkserver(victim)
        flushed = log.read_text().count('F ')
        wait_for(lambda: log.read_text().count('F ') >= flushed + 5, 60,
                 lambda: 'the writer to go on: %s' % log.read_text()[-300:])
        assert writer.poll() is None, log.read_text()[-500:]
        writer.kill()
        cluster.kill_master()
        for i in list(cluster.cs_procs):
            cluster.kill_chunkserver(i)
    finally:
        if writer.poll() is None:
            writer.kill()
        writer.wait(10)
    cluster.start_master()
    for i in range(cluster.n):
        cluster.start_chunkserver(i, wait=False)
    text = log.read_text()
    assert '\nX ' not in text, text[-500:]

    def recovered():
        sets = replica_sets(cluster, 'v')
        if not all(len(ids) == 3 for ids in sets.values()):
            return None
        with data_client(cluster) as cl:
            report = cl.run(lambda c: check.check_volume(c, vid, deep=True))
        return report['problems'] == [] and report
    wait_for(recovered, 120, lambda: 'replicas back and identical: %s %s' % (
        replica_sets(cluster, 'v'), client.cluster_status()['repair']))

    writes, last_flush = [], 0
    for line in text.splitlines():
        f = line.split()
        if f and f[0] == 'W':
            writes.append((int(f[1]), int(f[2])))
        elif f and f[0] == 'F':
            last_flush = int(f[1])
    assert last_flush >= 16 * 8
    allowed = {}
    for b, k in writes:
        if k <= last_flush:
            allowed[b] = {_block(b, k)}         # the last flushed write...
        else:
            allowed.setdefault(b, {bytes(BS)}).add(_block(b, k))  # ...or later
    with data_client(cluster) as cl:
        with cl.open_volume('v', writable=False) as v:
            image = v.read(0, SIZE)
    bad = [b for b, ok in allowed.items()
           if image[b * BS:(b + 1) * BS] not in ok]
    assert bad == [], 'blocks without their last flushed write: %s' % bad[:10]
    untouched = set(range(SIZE // BS)) - set(allowed)
    assert all(image[b * BS:(b + 1) * BS] == bytes(BS) for b in untouched)


def _chunk_files(cluster, i, vid, index):
    d = os.path.join(cluster.cs_dir(i), 'chunks', vid)
    return [os.path.join(d, n) for n in os.listdir(d)
            if n.split('.')[0] == str(index)]


def test_a_power_cut_primary_is_no_authority_for_what_it_lost(
        make_cluster, tmp_path):
    """The primary's machine loses power after every replica acknowledged
    a write it had not synced, and comes back (another boot) within the
    grace period: it leaves the chunk's replica set, so its copy, missing
    the write, neither serves reads nor overwrites the others; the
    client's flush keeps the write, and the returning copy gets it, and
    a block the power cut tore there (metadata without its data), which
    the metadata alone cannot tell from the others'."""
    # (The master plans its first repairs server_timeout after it starts.)
    cluster = make_cluster(3, server_timeout=8.0, extra_conf=(
        '[ursa_master]\nreplica_grace = 600\nrepair_interval = 0.3\n'))
    client = cluster.client()
    vid = client.create_volume('v', 4 * MiB, chunk_size=MiB)['id']
    with data_client(cluster) as cl:
        v = cl.open_volume('v')
        v.write(0, b'o' * BS + b'p' * BS)
        v.flush()
        chunk = client.chunk_map(vid, 0, 1)['chunks'][0]
        primary = chunk['replicas'][0]['id']
        p = server_index(cluster, primary)
        synced = tmp_path / 'synced'
        synced.mkdir()
        for path in _chunk_files(cluster, p, vid, 0):
            shutil.copy2(path, synced)
        v.write(0, b'n' * BS)             # acknowledged by all 3
        # The power cut: the process dies, its files are as they were at
        # the last sync, the machine boots again (another boot id).
        cluster.kill_chunkserver(p)
        for path in _chunk_files(cluster, p, vid, 0):
            os.unlink(path)
        for name in os.listdir(synced):
            shutil.copy2(synced / name, os.path.join(
                cluster.cs_dir(p), 'chunks', vid))
        # And block 1 torn: its metadata reached the disk, its data not.
        with open(os.path.join(cluster.cs_dir(p), 'chunks', vid, '0.data'),
                  'r+b') as f:
            f.seek(BS)
            f.write(b'x' * BS)
        with open(os.path.join(cluster.cs_dir(p), 'boot-id'), 'w') as f:
            f.write('another boot\n')
        cluster.start_chunkserver(p)
        v.flush()
        v.close()
    chunk = client.chunk_map(vid, 0, 1)['chunks'][0]
    assert chunk['replicas'][0]['id'] != primary

    def caught_up():
        c = client.chunk_map(vid, 0, 1)['chunks'][0]
        return len(c['replicas']) == 3 and not c['joining'] and c
    chunk = wait_for(caught_up, 60, 'the returning copy brought up to date')
    for r in chunk['replicas']:
        assert _read_from(cluster, vid, chunk, r['id']) == b'n' * BS
        assert _read_from(cluster, vid, chunk, r['id'], 1) == b'p' * BS
    with data_client(cluster) as cl:
        report = cl.run(lambda c: check.check_volume(c, vid, deep=True))
        assert report['problems'] == [], report['problems']

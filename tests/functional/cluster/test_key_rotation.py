"""The cluster key is changed without downtime ([ursa]
accepted_cluster_key_files): every server is restarted, one at a time,
first accepting the new key, then using it and accepting the old one,
then with the new key alone.  Writers using the old key and then the
new one never see an error, and once the rotation is over the old key
opens nothing: no REST request, no data connection."""

import os
import signal
import threading

import pytest

from cinder_ursa import exception
from cinder_ursa.client import master as master_mod
from cinder_ursa.client import sync
from cinder_ursa.common import auth
from cinder_ursa.transport import aio
from tests.fixtures.wait import wait_for
from tests.functional.faults.test_failover_io import ROLLING_CONF
from tests.functional.faults.test_failover_io import the_leader

MiB = 1024 * 1024
BS = 4096


class Writer(threading.Thread):
    """Writes volume ``name`` block after block with ``key``, flushing
    every 8 writes, until stopped; then reads every block back.  Every
    error is kept."""

    def __init__(self, cluster, name, key):
        super().__init__(name='writer-' + name, daemon=True)
        self.cluster, self.volume, self.key = cluster, name, key
        self.stop = threading.Event()
        self.errors = []
        self.written = {}
        self.start()

    def run(self):
        try:
            with sync.SyncCluster(self.cluster.master_urls, self.key,
                                  io_timeout=60.0) as cl:
                with cl.open_volume(self.volume) as v:
                    n = 0
                    while not self.stop.is_set() or n < 16:
                        block = n % 256
                        data = os.urandom(BS)
                        v.write(block * BS, data)
                        self.written[block] = data
                        n += 1
                        if n % 8 == 0:
                            v.flush()
                    for block, data in self.written.items():
                        if v.read(block * BS, BS) != data:
                            self.errors.append('block %d differs' % block)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(e))

    def finish(self):
        self.stop.set()
        self.join(180)
        assert not self.is_alive(), 'writer %s hung' % self.volume
        return self.errors


def redundant(c):
    """Whether every chunk has all its replicas, none being copied."""
    st = master_mod.MasterClient(c.master_urls, c.key).cluster_status()
    return (not st['degraded_chunks'] and not st['joining_replicas']
            and not st['repair'].get('running')
            and st['servers']['up'] == st['servers']['total'])


def test_the_cluster_key_is_rotated_without_downtime(make_cluster,
                                                     tmp_path):
    # Two masters: one leads while the other restarts.
    c = make_cluster(3, masters=2, extra_conf=ROLLING_CONF + (
        'replica_grace = 1\nrepair_interval = 0.3\n'))
    old_file, old = c.key_file, c.key
    new_file = str(tmp_path / 'new.key')
    new = auth.create_key_file(new_file)
    base = c.extra_conf
    admin = c.client()
    for name in ('a', 'b'):
        admin.create_volume(name, MiB, chunk_size=MiB)

    def roll(options):
        """Restart every server, one at a time, with ``options`` in
        [ursa]."""
        c.extra_conf = base + '\n[ursa]\n' + options
        c.write_config()
        for i in range(len(c.master_urls)):
            wait_for(lambda: the_leader(c), 60,
                     'a leader with every other master standing by')
            c.kill_master(signal.SIGTERM, i)
            c.start_master(i)
        for i in range(c.n):
            c.kill_chunkserver(i, signal.SIGTERM)
            c.start_chunkserver(i)
            # As an operator would: the next one once every chunk has
            # its replicas again (the writes made meanwhile caught up).
            wait_for(lambda: redundant(c), 120, 'full redundancy')

    first = Writer(c, 'a', old)
    roll('accepted_cluster_key_files = %s\n' % new_file)
    # Every process uses the new key (the test's own clients too).
    c.key_file = new_file
    roll('accepted_cluster_key_files = %s\n' % old_file)
    assert c.key == new
    # Both keys open everything now: the old writer goes on, a new one
    # starts.
    second = Writer(c, 'b', new)
    assert first.finish() == []
    roll('')
    assert second.finish() == []

    # Over: the old key is refused by the master and the chunk servers.
    for url in c.master_urls:
        wait_for(lambda: the_leader(c), 60, 'a leader')
        with pytest.raises(exception.NotAuthorized):
            master_mod.MasterClient([url], old).volume('a')
    assert [v['name'] for v in master_mod.MasterClient(
        c.master_urls, new).volumes()] == ['a', 'b']
    server = master_mod.MasterClient(c.master_urls, new).servers()[0]

    async def connect(key):
        conn = await aio.PeerConnection.connect(server['address'],
                                                server['port'], key)
        conn.close()
    with sync.SyncCluster(c.master_urls, new) as cl:
        cl.call(connect, new)
        with pytest.raises(exception.NotAuthorized, match='cluster key'):
            cl.call(connect, old)

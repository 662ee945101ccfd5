"""The master store and its election on the servers several masters
share: the term's compare and swap and the write check on MariaDB and
PostgreSQL, strings every database keeps alike, and a SIGKILLed leader replaced
by its standby with the metadata on MariaDB or PostgreSQL and the
election through tooz's file or Redis backend."""

import concurrent.futures
import os
import signal
import time

import pytest
import sqlalchemy as sa

from cinder_ursa import exception
from cinder_ursa.client import sync
from cinder_ursa.master import migrations
from cinder_ursa.master import models
from cinder_ursa.master import store as store_mod
from tests.fixtures.master import add_servers
from tests.fixtures.wait import wait_for
from tests.functional.faults.test_master_failover import CONF
from tests.functional.faults.test_master_failover import FAILOVER_BOUND
from tests.functional.faults.test_master_failover import LEASE
from tests.functional.faults.test_master_failover import SERVER_TIMEOUT
from tests.functional.faults.test_master_failover import leads
from tests.functional.faults.test_master_failover import masters_of

pytestmark = pytest.mark.timeout(180)

MiB = 1024 * 1024
# The newest migration: what an upgraded database is at.
SCHEMA = max(name[:4] for name in os.listdir(os.path.join(
    os.path.dirname(migrations.__file__), 'versions'))
    if name[:4].isdigit())


@pytest.mark.parametrize('backend', ['mariadb', 'postgresql'])
def test_term_check(request, backend):
    """The term's compare and swap and the write check: a write of the
    deposed leader is refused, not committed over the new term (MySQL
    counts an UPDATE that changes nothing as matched only because
    SQLAlchemy connects with CLIENT_FOUND_ROWS; PostgreSQL's READ
    COMMITTED re-reads the term row it waited for)."""
    url = request.getfixturevalue(backend).new_database()
    a, b = (store_mod.MetadataStore(url) for _ in range(2))
    try:
        a.upgrade()
        assert a.schema_version() == b.schema_version() == SCHEMA
        term = a.take_term(0, 'http://a')
        assert term == 1 and b.take_term(0, 'http://b') is None
        a.guard = lambda: term
        a.create_volume('v', 4 * MiB, chunk_size=4 * MiB)
        assert b.take_term(term, 'http://b') == term + 1
        with pytest.raises(exception.NotLeader, match='term 1 is over'):
            a.create_volume('w', 4 * MiB, chunk_size=4 * MiB)
        b.guard = lambda: term + 1
        b.create_volume('w', 4 * MiB, chunk_size=4 * MiB)
        assert {v['name'] for v in b.list_volumes()} == {'v', 'w'}
    finally:
        a.close()
        b.close()


def test_postgresql_url_without_driver_gets_psycopg(postgresql):
    """``postgresql://`` (SQLAlchemy's default driver, psycopg2, is not
    installed) connects through psycopg 3."""
    url = postgresql.new_database().replace('postgresql+psycopg://',
                                            'postgresql://')
    s = store_mod.MetadataStore(url)
    try:
        s.upgrade()
        assert s.engine.dialect.driver == 'psycopg'
        assert s.schema_version() == SCHEMA
    finally:
        s.close()


@pytest.mark.parametrize('backend', ['mariadb', 'postgresql'])
def test_new_term_waits_for_the_old_leaders_open_write(request, backend):
    """The write check locks the term row until its transaction ends: a
    standby's compare and swap waits for the leader's write in progress,
    so that write is committed before the new term, never after it."""
    url = request.getfixturevalue(backend).new_database()
    a, b = (store_mod.MetadataStore(url) for _ in range(2))
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        a.upgrade()
        term = a.take_term(0, 'http://a')
        a.guard = lambda: term
        f = models.fenced_hosts
        with a.begin() as conn:
            conn.execute(f.insert().values(host='h', fenced_at=0.0))
            taken = pool.submit(b.take_term, term, 'http://b')
            time.sleep(1.0)
            assert not taken.done(), taken.result()
        assert taken.result(30) == term + 1
        with b.engine.connect() as conn:
            assert conn.execute(sa.select(f.c.host)).scalars().all() == ['h']
    finally:
        pool.shutdown()
        a.close()
        b.close()


def test_strings_no_database_keeps_are_refused_alike(any_store):
    """A NUL character (PostgreSQL stores none) or a string longer than
    its column (MySQL and PostgreSQL refuse it, SQLite keeps it) is an
    invalid argument, or names nothing, on every database: never a
    database error (an HTTP 500) on some of them only."""
    s = any_store
    add_servers(s, 1)
    s.create_volume('v', 4 * MiB, chunk_size=4 * MiB, replicas=1,
                    min_replicas=1)
    s.begin_snapshot('v', 's')
    invalid = [
        lambda: s.create_volume('a\x00b', 4 * MiB, chunk_size=4 * MiB),
        lambda: s.update_volume('v', name='v\x00'),
        lambda: s.begin_snapshot('v', 's\x00'),
        lambda: s.rename_snapshot('v@s', 't\x00'),
        lambda: s.acquire_lease('v', 'h' * 256, 30),
        lambda: s.acquire_lease('v', 'h\x00:1:2', 30),
        lambda: s.renew_lease('v', 'h\x00:1:2', 1, 30),
        lambda: s.release_lease('v', 'h\x00:1:2', 1),
        lambda: s.attach('v', 'h\x00'),
        lambda: s.update_attachment('v', 'h', 'attached', path='p' * 1025),
        lambda: s.update_attachment('v', 'h', 'error', error='e\x00'),
        lambda: s.fence_host('h', reason='r\x00'),
        lambda: s.host_status('h\x00'),
    ]
    s.attach('v', 'h')
    for call in invalid:
        with pytest.raises(exception.InvalidArgument):
            call()
    for call in (lambda: s.get_volume('v\x00'),
                 lambda: s.get_snapshot('v@s\x00'),
                 lambda: s.get_snapshot('s\x00', volume='v')):
        with pytest.raises(exception.NotFound):
            call()
    # Nothing was changed; the longest strings the columns take are kept.
    assert [v['name'] for v in s.list_volumes()] == ['v']
    assert s.get_attachment('v', 'h')['status'] == 'attaching'
    assert s.list_fenced_hosts() == []
    s.update_attachment('v', 'h', 'attached', path='p' * 1024)
    assert s.acquire_lease('v', 'h' * 255, 30)['generation'] == 1
    s.create_volume('n' * 255, 4 * MiB, chunk_size=4 * MiB, replicas=1,
                    min_replicas=1)


def redis_beats(port):
    """{tooz member: milliseconds its Redis heartbeat key has to live}."""
    import redis
    r = redis.Redis(host='127.0.0.1', port=port)
    try:
        return {k.split(b':', 1)[1].decode(): r.pttl(k)
                for k in r.keys(b'_tooz_beats:*')}
    finally:
        r.close()


@pytest.mark.parametrize('database,backend', [
    ('mariadb', 'file'), ('postgresql', 'file'), ('postgresql', 'redis')],
    ids=['mariadb-file', 'postgresql-file', 'postgresql-redis'])
def test_sigkill_leader_standby_takes_over(request, database, backend):
    """ursa-aio --masters 2 over a database server and a tooz backend:
    the leader is SIGKILLed, the standby leads with term + 1, a client
    given both URLs creates a volume, the earlier one is intact."""
    url = request.getfixturevalue(database).new_database()
    coord = None
    if backend == 'redis':
        redis_port = request.getfixturevalue('redis_server').port
        # No member timeout in the URL: the master adds the lease.
        coord = 'redis://127.0.0.1:%d' % redis_port
    # Asked for after the servers, so the cluster stops before them.
    make_cluster = request.getfixturevalue('make_cluster')
    c = make_cluster(3, masters=2, server_timeout=SERVER_TIMEOUT,
                     extra_conf=CONF, database_url=url,
                     coordination_url=coord)
    first, second = c.master_urls
    term = wait_for(lambda: leads(c, first, [second]), 10,
                    'master 0 leading with master 1 as standby')['term']
    with open(os.path.join(c.data_dir, 'master.log')) as f:
        assert 'database %s' % url.split(':', 1)[0] in f.read()
    if backend == 'redis':
        beats = redis_beats(redis_port)
        assert set(beats) == {first, second}, beats
        assert all(0 < ms <= LEASE * 1000 for ms in beats.values()), beats
    client = c.client()
    client.create_volume('before', 8 * MiB, chunk_size=4 * MiB)
    payload = bytes(range(256)) * 16
    with sync.SyncCluster(list(c.master_urls), c.key) as data:
        with data.open_volume('before') as v:
            v.write(4096, payload)
            v.flush()
    c.kill_master(signal.SIGKILL, 0)
    start = time.monotonic()
    client.create_volume('after', 8 * MiB, chunk_size=4 * MiB)
    took = time.monotonic() - start
    assert took < FAILOVER_BOUND, took
    m = masters_of(c, second)
    assert m['leader'] == second and m['term'] == term + 1, m
    assert {v['name'] for v in client.volumes()} == {'before', 'after'}
    with sync.SyncCluster(list(c.master_urls), c.key) as data:
        with data.open_volume('before') as v:
            assert v.read(4096, len(payload)) == payload

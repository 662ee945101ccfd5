"""A temporary Ursa cluster of real processes on 127.0.0.1, dynamic ports.

The fixture is ``ursa-aio``'s own launcher, so the tests start the cluster
exactly as operators do.  Every process is stopped (and killed if it does
not stop) when the test ends.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from cinder_ursa.client import sync
from cinder_ursa.cmd.allinone import AllInOne


@pytest.fixture
def make_cluster(tmp_path):
    clusters = []

    def make(chunkservers=3, **kwargs):
        kwargs.setdefault('server_timeout', 3.0)
        d = os.path.join(str(tmp_path), 'cluster%d' % len(clusters))
        c = AllInOne(d, chunkservers, port_base=0, **kwargs)
        clusters.append(c)
        c.start()
        return c

    yield make
    for c in clusters:
        c.stop()


def module_cluster(tmp_path_factory, name, nbd=False, **kwargs):
    """Body of a module-scoped cluster fixture: ``yield from`` it."""
    kwargs.setdefault('server_timeout', 3.0)
    c = AllInOne(str(tmp_path_factory.mktemp(name)), 3, port_base=0,
                 **kwargs)
    c.start(nbd=nbd)
    try:
        yield c
    finally:
        c.stop()


def data_client(cluster, **kwargs):
    kwargs.setdefault('io_timeout', 30.0)
    return sync.SyncCluster([cluster.master_url], cluster.key, **kwargs)


@pytest.fixture
def faulty_disk(tmp_path):
    """(mountpoint, trigger): the data directory of chunk server 0 of a
    cluster made in ``tmp_path / 'cluster'``, on a disk that fails while
    ``trigger`` exists (see faultydisk.py: it also tells what a power cut
    would lose, and can be made slow)."""
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


def unsynced(trigger, volume_id=None):
    """What a power cut on the faulty disk would lose now: paths of files
    written since their last fsync and of directories with entries not yet
    made durable (those of ``volume_id`` and the chunks directory only,
    when given)."""
    with open(str(trigger) + '.unsynced') as f:
        state = json.load(f)
    paths = state['files'] + state['dirs']
    if volume_id is None:
        return paths
    return [p for p in paths if volume_id in p or p == '/chunks']


class MariaDB:
    """A private mariadbd on 127.0.0.1 (Debian's mariadb-server)."""

    def __init__(self, base):
        self.base = base
        self.port = None
        self.proc = None
        self._n = 0

    def start(self):
        import socket
        import subprocess
        import time
        data = os.path.join(self.base, 'data')
        with open(os.path.join(self.base, 'install.log'), 'wb') as log:
            subprocess.run([
                'mariadb-install-db', '--no-defaults', '--datadir=' + data,
                '--auth-root-authentication-method=normal', '--skip-test-db',
                '--user=root'], check=True, stdout=log,
                stderr=subprocess.STDOUT)
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen([
            _mariadbd(), '--no-defaults', '--datadir=' + data,
            '--socket=' + os.path.join(self.base, 'sock'),
            '--port=%d' % self.port, '--bind-address=127.0.0.1',
            '--user=root', '--skip-grant-tables',
            '--log-error=' + os.path.join(self.base, 'error.log'),
            '--innodb-buffer-pool-size=64M'],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        import pymysql
        while True:
            try:
                pymysql.connect(host='127.0.0.1', port=self.port,
                                user='root').close()
                return self
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError('mariadbd did not start; see %s'
                                       % self.base)
                time.sleep(0.2)

    def new_database(self):
        import pymysql
        self._n += 1
        name = 'ursa%d' % self._n
        conn = pymysql.connect(host='127.0.0.1', port=self.port, user='root')
        with conn.cursor() as cur:
            cur.execute('CREATE DATABASE %s' % name)
        conn.close()
        return 'mysql+pymysql://root@127.0.0.1:%d/%s' % (self.port, name)

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(60)


def rss_mib(pid):
    """Resident memory of process ``pid``, in MiB."""
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    raise AssertionError('no VmRSS for %d' % pid)


def growth_when_flooded(sock, requests, pid):
    """Send ``requests`` whose replies are never read; return how many MiB
    process ``pid`` grew by 3 s later."""
    before = rss_mib(pid)
    sock.settimeout(5)
    try:
        sock.sendall(requests)
    except TimeoutError:
        pass  # the server stopped reading us: that is the point
    time.sleep(3)
    return rss_mib(pid) - before


def _mariadbd():
    import shutil
    for path in (shutil.which('mariadbd'), '/usr/sbin/mariadbd'):
        if path and os.path.exists(path):
            return path
    return None


@pytest.fixture(scope='session')
def mariadb(tmp_path_factory):
    import shutil
    if not _mariadbd() or not shutil.which('mariadb-install-db'):
        if os.environ.get('CI'):
            pytest.fail('mariadb-server is not installed; tools/run-tests '
                        'installs it (apt-get install mariadb-server)')
        pytest.skip('mariadb-server is not installed')
    db = MariaDB(str(tmp_path_factory.mktemp('mariadb'))).start()
    yield db
    db.stop()


@pytest.fixture(params=['sqlite', 'mariadb'])
def any_db_cluster(request, make_cluster):
    """make_cluster with the master's metadata on SQLite, then MariaDB."""
    if request.param == 'sqlite':
        return make_cluster
    db = request.getfixturevalue('mariadb')

    def make(*args, **kwargs):
        return make_cluster(*args, database_url=db.new_database(), **kwargs)
    return make

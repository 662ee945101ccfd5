"""Fixtures of the functional tests: temporary Ursa clusters of real
processes on 127.0.0.1 with dynamic ports, the cluster shapes of the
contract suite, a disk that fails on demand, disks that lose power.

The cluster is ``ursa-aio``'s own launcher (``AllInOne``), so the tests
start it exactly as operators do.  Every process is stopped (and killed
if it does not stop) when the test ends.
"""

import os

import pytest

from cinder_ursa.cmd.allinone import AllInOne
from tests.fixtures import cluster as cluster_fixtures
from tests.fixtures import faultydisk
from tests.fixtures import logs
from tests.fixtures import netns
from tests.fixtures import powerloss
from tests.fixtures.processes import free_port_base
from tests.fixtures.services import unavailable

# After a cold start, a chunk server the master has not heard yet is
# marked down after this long (server_timeout otherwise): the tests that
# restart everything start the chunk servers one by one on a loaded
# machine.
STARTUP_TIMEOUT = 15.0


# The data directories of the clusters a test made: their logs' warnings
# and errors are shown with its failure (a CI machine's are gone after).
CLUSTER_DIRS = pytest.StashKey[list]()
LOG_LINES = 25      # per log file


def watch_logs(request, data_dir):
    request.node.stash.setdefault(CLUSTER_DIRS, []).append(str(data_dir))


def log_excerpt(dirs, lines=LOG_LINES):
    """The last ``lines`` WARNING/ERROR lines of every process log of
    the clusters in ``dirs``."""
    out = []
    for d in dirs:
        for path, bad in logs.matching(d, lambda line: (
                ' WARNING ' in line or ' ERROR ' in line
                or 'Traceback' in line)):
            if bad:
                out.append('== %s (last %d of %d)' % (
                    path, min(lines, len(bad)), len(bad)))
                out.extend(bad[-lines:])
    return '\n'.join(out)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == 'call' and report.failed:
        text = log_excerpt(item.stash.get(CLUSTER_DIRS, []))
        if text:
            report.sections.append(('cluster logs: warnings and errors',
                                    text))
    return report


def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'one_shape(reason): a test taking ``cluster_shape`` '
        'runs on the default shape only, for the reason given')


def pytest_generate_tests(metafunc):
    """``cluster_shape`` is every shape of tests.fixtures.cluster.SHAPES
    (module-scoped, so module clusters are made once per shape), or the
    default one for tests marked ``one_shape``."""
    if 'cluster_shape' not in metafunc.fixturenames:
        return
    mark = metafunc.definition.get_closest_marker('one_shape')
    if mark is not None:
        assert mark.args and mark.args[0], 'one_shape needs a reason'
    shapes = cluster_fixtures.SHAPES[:1] if mark else cluster_fixtures.SHAPES
    metafunc.parametrize('cluster_shape', shapes, ids=str, scope='module')


@pytest.fixture
def make_cluster(request, tmp_path):
    """make(chunkservers=3, **AllInOne arguments): a started cluster."""
    clusters = []

    def make(chunkservers=3, **kwargs):
        kwargs.setdefault('server_timeout', 3.0)
        kwargs.setdefault('server_startup_timeout', STARTUP_TIMEOUT)
        kwargs['extra_conf'] = cluster_fixtures.NO_REBALANCE + (
            kwargs.get('extra_conf') or '')
        d = os.path.join(str(tmp_path), 'cluster%d' % len(clusters))
        c = AllInOne(d, chunkservers, port_base=0, **kwargs)
        clusters.append(c)
        watch_logs(request, d)
        c.start()
        return c

    yield make
    for c in clusters:
        c.stop(kill=True)


def shape_kwargs(request, shape):
    kwargs = shape.cluster_kwargs()
    if shape.database == 'mariadb':
        kwargs['database_url'] = request.getfixturevalue(
            'mariadb').new_database()
    return kwargs


@pytest.fixture
def shaped_cluster(request, cluster_shape, make_cluster):
    """A started cluster of ``cluster_shape``, for this test only."""
    return make_cluster(cluster_shape.chunkservers,
                        **shape_kwargs(request, cluster_shape))


@pytest.fixture(scope='module')
def module_shaped_cluster(request, cluster_shape, tmp_path_factory):
    """A started cluster of ``cluster_shape`` shared by the module's tests
    of that shape."""
    yield from cluster_fixtures.module_cluster(
        tmp_path_factory, 'shape-%s' % cluster_shape,
        chunkservers=cluster_shape.chunkservers,
        **shape_kwargs(request, cluster_shape))


@pytest.fixture
def network():
    """A netns.Network: hosts of their own on one bridge, and faults
    between them; deleted with all it holds when the test ends, also
    when it fails."""
    netns.require()
    net = netns.Network()
    try:
        yield net
    finally:
        net.close()


@pytest.fixture
def make_ns_cluster(request, network, tmp_path):
    """make(chunkservers=3, nbd=False, **AllInOne arguments): a started
    cluster whose master, chunk servers and gateway are each on a host
    of their own in ``network`` (netns.cluster)."""
    clusters = []

    def make(chunkservers=3, nbd=False, **kwargs):
        d = os.path.join(str(tmp_path), 'nscluster%d' % len(clusters))
        c = netns.cluster(network, d, chunkservers, nbd=nbd, **kwargs)
        clusters.append(c)
        watch_logs(request, d)
        c.start(nbd=nbd)
        return c

    yield make
    for c in clusters:
        c.stop(kill=True)


@pytest.fixture
def faulty_disk(tmp_path):
    """(mountpoint, trigger): the data directory of chunk server 0 of a
    cluster made in ``tmp_path / 'cluster'``, on a disk that fails while
    ``trigger`` exists (see tests/fixtures/faultydisk.py: it also tells
    what a power cut would lose, and can be made slow)."""
    if not os.path.exists('/dev/fuse') or os.geteuid() != 0:
        if os.environ.get('CI'):
            pytest.fail('CI needs /dev/fuse and root for the failing disk')
        pytest.skip('needs /dev/fuse and root')
    backing, mount = tmp_path / 'disk', tmp_path / 'cluster' / 'cs0'
    trigger = tmp_path / 'disk-fails'
    backing.mkdir()
    mount.mkdir(parents=True)
    with faultydisk.mounted(backing, mount, trigger):
        yield mount, trigger


@pytest.fixture
def power_loss_cluster(request, tmp_path):
    """make(chunkservers=3, disks=None, fixed_ports=True, **AllInOne
    arguments): a started cluster whose chunk servers ``disks`` (all when
    None) keep their data directories on power-loss disks
    (tests/fixtures/powerloss.py), as a ``PowerCuts``: ``.cluster``,
    ``.cut(*servers)``, ``.restart()``."""
    why = powerloss.missing()
    if why:
        unavailable(why)
    made = []

    def make(chunkservers=3, disks=None, fixed_ports=True, **kwargs):
        kwargs.setdefault('server_timeout', 3.0)
        kwargs.setdefault('server_startup_timeout', STARTUP_TIMEOUT)
        kwargs['extra_conf'] = cluster_fixtures.NO_REBALANCE + (
            kwargs.get('extra_conf') or '')
        d = tmp_path / ('powercut%d' % len(made))
        # Fixed ports, as in production, unless asked otherwise: a power
        # cut may lose the endpoint.json by which a restarted chunk
        # server finds the dynamic port it had.
        c = AllInOne(str(d), chunkservers, port_base=free_port_base(
            chunkservers + 1) if fixed_ports else 0, **kwargs)
        cuts = powerloss.PowerCuts(c, {})
        made.append(cuts)
        watch_logs(request, d)
        for i in range(chunkservers) if disks is None else disks:
            cuts.disks[i] = powerloss.PowerLossDisk(
                d / 'disks' / ('cs%d' % i), c.cs_dir(i),
                d / 'disks' / ('cs%d.state' % i)).start()
        c.start()
        return cuts

    yield make
    for cuts in made:
        cuts.stop()


@pytest.fixture(params=['sqlite', 'mariadb'])
def any_db_cluster(request, make_cluster):
    """make_cluster with the master's metadata on SQLite, then MariaDB."""
    if request.param == 'sqlite':
        return make_cluster
    db = request.getfixturevalue('mariadb')

    def make(*args, **kwargs):
        return make_cluster(*args, database_url=db.new_database(), **kwargs)
    return make

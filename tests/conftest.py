"""Fixtures shared by several test directories: private services and the
fake Nova.  Their code is in ``tests.fixtures``; nova_ha's modules are
imported inside the fixtures, so that the driver's tests, which may
monkey-patch this process with eventlet in their own conftest, import
nothing here that must be patched first."""

import pytest

from tests.fixtures import services


@pytest.fixture(scope='session')
def mariadb(tmp_path_factory):
    """A private MariaDB for the whole session; ``new_database()`` gives
    each user a database URL of its own."""
    services.MariaDB.require()
    db = services.MariaDB(str(tmp_path_factory.mktemp('mariadb'))).start()
    yield db
    db.stop()


@pytest.fixture(scope='session')
def postgresql(tmp_path_factory):
    """A private PostgreSQL for the whole session; ``new_database()``
    gives each user a database URL of its own."""
    services.PostgreSQL.require()
    db = services.PostgreSQL(
        str(tmp_path_factory.mktemp('postgresql'))).start()
    yield db
    db.stop()


@pytest.fixture
def redis_server(tmp_path):
    r = services.Redis(tmp_path / 'redis').start()
    yield r
    r.stop()


@pytest.fixture
def fake_nova():
    from tests.fixtures import fakenova
    f = fakenova.FakeNovaThread(step=0.1).start()
    yield f
    f.stop()


@pytest.fixture
def members():
    """members(conf): tooz members standing in for compute hosts' agents,
    all leaving at teardown."""
    from tests.fixtures import novaha
    made = []

    def make(conf):
        m = novaha.Members(conf)
        made.append(m)
        return m
    yield make
    for m in made:
        m.close()

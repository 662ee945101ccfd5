"""Fixtures of the tests run against every database the master runs on."""

import pytest

from cinder_ursa.master import store as store_mod


@pytest.fixture(params=['sqlite', 'mariadb', 'postgresql'])
def any_store(request, tmp_path):
    """An upgraded store on SQLite, MariaDB, then PostgreSQL."""
    if request.param == 'sqlite':
        url = 'sqlite:///%s' % (tmp_path / 'm.sqlite')
    else:
        url = request.getfixturevalue(request.param).new_database()
    s = store_mod.MetadataStore(url)
    s.upgrade()
    yield s
    s.close()

"""Fixtures of the master's unit tests."""

import pytest

from cinder_ursa.master import store as store_mod


@pytest.fixture
def store(tmp_path):
    """A metadata store on a new SQLite file, failure domain ``host``."""
    s = store_mod.MetadataStore('sqlite:///%s' % (tmp_path / 'm.sqlite'),
                                failure_domain='host')
    s.upgrade()
    yield s
    s.close()

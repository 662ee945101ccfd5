"""The Cinder driver's tests: see tests/fixtures/cindermode.py for the two
ways tools/run-tests runs them (native threads, eventlet)."""

from tests.fixtures import cindermode

cindermode.patch_as_asked()


def pytest_collection_modifyitems(items):
    cindermode.long_timeouts(items, __file__)


def pytest_configure(config):
    cindermode.keep_cinder_test_methods()

"""The Cinder driver's tests: see tests/fixtures/cindermode.py for the two
ways tools/run-tests runs them (native threads, eventlet)."""

from tests.fixtures import cindermode

pytest_collection_modifyitems, pytest_configure = \
    cindermode.conftest_hooks(__file__)

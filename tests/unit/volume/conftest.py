"""Tests of the Cinder driver, with the cinder package installed.

tools/run-tests runs this directory twice: with native threads
(OS_CINDER_DISABLE_EVENTLET_PATCHING=1, the default here) and under
eventlet monkey patching (=0), as cinder-volume runs by default.
"""

import os

os.environ.setdefault('OS_CINDER_DISABLE_EVENTLET_PATCHING', '1')
if os.environ['OS_CINDER_DISABLE_EVENTLET_PATCHING'].lower() in (
        '0', 'false', 'no'):
    from cinder import monkey_patch
    monkey_patch.patch()

import pytest  # noqa: E402


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.timeout(600))


def pytest_configure(config):
    # cinder's TestCase cleanup deletes the test method attribute that
    # pytest removes later (pytest >= 8): keep it (openstack-notes.md).
    try:
        from cinder.tests.unit import test as cinder_test
    except ImportError:
        return
    original = cinder_test.TestCase._common_cleanup

    def _common_cleanup(self):
        name = self._testMethodName
        keep = self.__dict__.get(name)
        original(self)
        if keep is not None:
            self.__dict__[name] = keep
    cinder_test.TestCase._common_cleanup = _common_cleanup

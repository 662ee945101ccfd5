"""One stack of real OpenStack services for every end-to-end test of a
run (tests/e2e/harness.py): starting it costs a minute and more, so the
tests share it and clean up what they create."""

import os
import time

import pytest

from tests.e2e import harness


def _say(config, text):
    """Print past pytest's capture: the start-up time belongs in the
    log of every run, passing or not."""
    capture = config.pluginmanager.getplugin('capturemanager')
    with capture.global_and_fixture_disabled():
        print('\n' + text, flush=True)


@pytest.fixture(scope='session')
def say(request):
    """Print a line in the run's log, past pytest's capture (the times a
    test measured)."""
    return lambda text: _say(request.config, text)


@pytest.fixture(scope='session')
def stack(tmp_path_factory, request):
    harness.need(('qemu-io', 'mariadbd', 'epmd'),
                 ('keystone', 'nova', 'placement', 'glance',
                  'openstack_dashboard', 'gunicorn', 'whitenoise',
                  'selenium'))
    if not os.path.exists('/dev/fuse') or os.geteuid() != 0:
        if os.environ.get('CI'):
            pytest.fail('ursa-attach needs root and /dev/fuse')
        pytest.skip('ursa-attach needs root and /dev/fuse')
    s = harness.Stack(str(tmp_path_factory.mktemp('e2e')))
    try:
        s.start()
        _say(request.config, 'e2e: ' + s.report())
        yield s
    except Exception:
        if s.cinder is not None:
            print(s.logs_tail())
        raise
    finally:
        t0 = time.monotonic()
        s.stop()
        _say(request.config, 'e2e: stack stopped in %.1f s (%s)' % (
            time.monotonic() - t0, ', '.join(
                '%s %.1f s' % kv for kv in s.timings.items()
                if kv[0].startswith('stop-'))))


# The end-to-end tests in the order they run: the nova_ha story kills
# compute hosts (and brings them back), so it comes after the tests that
# take the stack as started.
ORDER = ('test_cinder_e2e.py', 'test_cinder_tempest.py',
         'test_horizon_e2e.py', 'test_nova_ha_e2e.py')


def pytest_collection_modifyitems(config, items):
    here = os.path.dirname(__file__)
    slots = [i for i, item in enumerate(items)
             if os.path.dirname(str(item.path)) == here]

    def rank(item):
        name = os.path.basename(str(item.path))
        return ORDER.index(name) if name in ORDER else len(ORDER)
    ordered = sorted((items[i] for i in slots), key=rank)
    for i, item in zip(slots, ordered, strict=True):
        items[i] = item

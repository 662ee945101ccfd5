"""The suites Cinder's third-party driver CI runs, against the stack:
Tempest's volume API tests and cinder-tempest-plugin's API tests, with
the Ursa driver as the only backend, Keystone, Glance, Nova, placement,
cinder-backup with the Ursa backup driver, and a Neutron stand-in.
Tempest makes its own projects, users and networks; nothing may fail,
and every test skipped is one the backend or the stack truly lacks (the
table in doc/source/cinder.rst says why for each).  Part of the
end-to-end stage of tools/run-tests; tools/run-tempest runs it alone."""

import os
import re
import time

import pytest

from tests.e2e import tempest_harness

pytestmark = pytest.mark.timeout(3600)

# The skips doc/source/cinder.rst explains, at most.
MAX_SKIPS = 10

SUITES = [('tempest.api.volume', r'^tempest\.api\.volume'),
          ('cinder_tempest_plugin.api', r'^cinder_tempest_plugin\.api')]


@pytest.fixture(scope='module')
def workspace(stack, tmp_path_factory):
    return tempest_harness.Workspace(
        stack, str(tmp_path_factory.mktemp('tempest') / 'workspace'))


def test_tempest_volume_suites_pass(workspace, say):
    # One Tempest run of both suites, its workers balanced across both
    # (Workspace.seed_times): 229 s on 2 cores, where a run of each suite
    # took 284 s in all.
    t0 = time.monotonic()
    everything = workspace.run('|'.join(regex for _, regex in SUITES))
    say('tempest (%.0f s):' % (time.monotonic() - t0))
    for name, regex in SUITES:
        results = everything.only(regex)
        say('tempest %s:' % name)
        tempest_harness.report(results, say)
        for test, reason in sorted(tempest_harness.EXCLUDED.items()):
            if re.match(regex, test):
                say('  excluded %s: %s' % (test, reason))
        assert results.tests, 'no test of %s ran; see %s' % (
            name, os.path.join(workspace.path, 'run.log'))
    failed = everything.having('fail')
    skipped = {**everything.having('skip'), **tempest_harness.EXCLUDED}
    assert not failed, '\n\n'.join('%s\n%s' % kv for kv in failed.items())
    unexplained = sorted(
        t for t in skipped if t not in tempest_harness.EXCLUDED and
        tempest_harness.class_of(t) not in tempest_harness.SKIPPED)
    assert not unexplained, (
        'skipped, and not in tempest_harness.SKIPPED and the Cinder '
        'guide: %s' % unexplained)
    assert len(skipped) <= MAX_SKIPS, sorted(skipped)

"""Tempest against the end-to-end stack: a workspace with a tempest.conf
that states what the Ursa backend supports, ``tempest run`` of a suite,
and its results read back from the workspace's stestr repository.

    workspace = Workspace(stack, path)
    results = workspace.run('^tempest\\.api\\.volume', concurrency=2)
    results.counts()    # {'success': N, 'skip': N, 'fail': N}

The stack (tests/e2e/harness.py) runs Keystone, Glance, Cinder with the
Ursa driver and the Ursa backup driver, Nova with fake computes and
placement, and a Neutron stand-in (tests/e2e/neutron_stub.py); Tempest
creates its own projects and users (dynamic credentials) and, for the
test classes that boot servers, their networks.
"""

import collections
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dbm import dumb

from tests.e2e import glance_harness
from tests.e2e import harness
from tests.e2e import nova_harness

VENV_BIN = os.path.dirname(sys.executable)

# What the Ursa backend supports, as tempest.conf's
# [volume-feature-enabled] states it.
FEATURES = {
    'backup': True,
    'snapshot': True,
    'clone': True,
    'manage_volume': True,
    'manage_snapshot': True,
    'extend_attached_volume': True,
    'extend_volume_with_snapshot': True,
    'multi_backend': False,
    'replication': False,
    'extend_attached_encrypted_volume': False,
    # cinder-tempest-plugin's
    'volume_revert': True,
    'consistency_group': False,
    # the plugin's scenario of concurrent creates (reported, not gated)
    'concurrency_tests': True,
}

# Tests that cannot pass against an out-of-tree driver, with why; they
# are not run (``tempest run --exclude-list``) and count as skipped.
EXCLUDED = {
    'tempest.api.volume.admin.test_volumes_backup.VolumesBackupsAdminTest.'
    'test_volume_backup_export_import':
        'asserts that the backup service is one of Cinder\'s own drivers '
        '(a class path starting with cinder.backup.drivers); the Ursa '
        'backup driver is cinder_ursa.backup.driver.UrsaBackupDriver. '
        'tests/e2e/test_cinder_e2e.py exports, imports and restores an '
        'Ursa backup instead.',
}


# The tests that skip, by class (a class skipped whole is one entry,
# ``setUpClass (CLASS)``), with why; doc/source/cinder.rst has the same
# table.  A skip not listed here fails the run.
SKIPPED = {
    'tempest.api.volume.admin.test_encrypted_volumes_extend.'
    'EncryptedVolumesExtendAttachedTest':
        'extending an attached encrypted volume is the hypervisor\'s work '
        '(no key manager, fake computes)',
    'tempest.api.volume.admin.test_multi_backend.VolumeMultiBackendTest':
        'needs two Cinder backends; the stack has one',
    'tempest.api.volume.admin.test_volume_retype.'
    'VolumeRetypeWithMigrationTest':
        'migrates between two backends; the stack has one',
    'cinder_tempest_plugin.api.volume.admin.test_consistencygroups.'
    'ConsistencyGroupsV2Test':
        'the driver does not implement consistent group snapshots '
        '(Cinder\'s generic groups, which GroupsTest and '
        'GroupSnapshotsTest drive, work)',
    'cinder_tempest_plugin.api.volume.admin.test_volume_replication.'
    'VolumeReplicationTest':
        'Cinder replication (failover to another backend) is not '
        'implemented',
    'cinder_tempest_plugin.api.volume.admin.'
    'test_volume_replication_negative.VolumeReplicationNegativeTest':
        'Cinder replication (failover to another backend) is not '
        'implemented',
}


def class_of(test_id):
    """The class of a test id: ``pkg.mod.Class.test[attrs]`` or
    ``setUpClass (pkg.mod.Class)``."""
    m = re.match(r'^\w+ \((.*)\)$', test_id)
    if m:
        return m.group(1)
    return test_id.split('[')[0].rsplit('.', 1)[0]


class Results:
    """Each test's status (``success``, ``skip``, ``fail``, ...) and
    reason: ``Results.read(stream)`` from a subunit v2 stream."""

    def __init__(self, tests=None, reasons=None):
        self.tests = tests or {}
        self.reasons = reasons or {}

    @classmethod
    def read(cls, stream):
        import subunit
        import testtools
        results = cls()
        case = subunit.ByteStreamToStreamResult(stream,
                                                non_subunit_name='stdout')
        result = testtools.StreamToDict(results._add)
        result.startTestRun()
        try:
            case.run(result)
        finally:
            result.stopTestRun()
        return results

    def _add(self, test):
        status = test['status']
        if status in ('exists', 'inprogress'):
            return
        self.tests[test['id']] = status
        details = test.get('details') or {}
        for key in ('reason', 'traceback'):
            if key in details:
                self.reasons[test['id']] = details[key].as_text().strip()
                break

    def counts(self):
        return dict(collections.Counter(self.tests.values()))

    def only(self, regex):
        """The results of the tests whose id, or class for a class's
        ``setUpClass``, matches ``regex``."""
        tests = {t: s for t, s in self.tests.items()
                 if re.match(regex, t) or re.match(regex, class_of(t))}
        return Results(tests, {t: r for t, r in self.reasons.items()
                               if t in tests})

    def having(self, status):
        """{test id: reason} of the tests that ended with ``status``."""
        return {t: self.reasons.get(t, '') for t, s in self.tests.items()
                if s == status}


# Cinder's detailed listing of every project's volumes reads each
# volume's group after its query (cinder/api/v3/views/volumes.py) and
# answers 404 for the whole listing when a group is deleted in between:
# the one test that lists so (VolumeManageAdminTest) once failed while
# GroupsTest deleted a group.  stestr runs these classes on one worker,
# one after the other: a group is the text the regex matches.
TOGETHER = (r'tempest\.api\.volume\.admin\.'
            r'(?=test_volume_manage\.|test_groups\.|test_group_snapshots\.)')
GROUP_REGEX = TOGETHER + r'|([^\.]*\.)*'

# Each test's seconds in a run of both API suites on 2 cores, at
# concurrency 4 (Workspace.save_times wrote it).
TIMES = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                     'tempest-times.json')


class Workspace:
    def __init__(self, stack, path):
        self.stack = stack
        self.path = path
        # tempest init: the workspace's stestr configuration (which finds
        # the plugins' tests too); its workspace list kept beside it.
        subprocess.run([os.path.join(VENV_BIN, 'tempest'), 'init',
                        '--workspace-path', path + '.workspace.yaml', path],
                       check=True, capture_output=True, timeout=120)
        self.conf = os.path.join(path, 'etc', 'tempest.conf')
        self.write_config()
        self.group_tests()
        self.seed_times()

    def group_tests(self):
        """Have stestr keep each class on one worker (as tempest init's
        configuration does), and the TOGETHER classes all on one."""
        conf = os.path.join(self.path, '.stestr.conf')
        with open(conf) as f:
            lines = [line for line in f.read().splitlines()
                     if not line.startswith('group_regex')]
        with open(conf, 'w') as f:
            f.write('\n'.join(lines + ['group_regex=' + GROUP_REGEX]) + '\n')

    def seed_times(self):
        """Give stestr each test's time in an earlier run (TIMES), which
        it balances its workers with; tests not listed there go to the
        workers in turn.  Without it, stestr deals the classes out in
        turn: in one run on 2 cores its 4 workers finished after 156,
        171, 240 and 261 s."""
        from stestr.repository import file as stestr_file
        if not os.path.isdir(os.path.join(self.path, '.stestr')):
            stestr_file.RepositoryFactory().initialise(self.path)
        with open(TIMES) as f:
            times = json.load(f)
        db = dumb.open(self._times_db, 'c')
        try:
            for test, seconds in times.items():
                db[test] = str(seconds)
        finally:
            db.close()

    @property
    def _times_db(self):
        """stestr's record of each test's time."""
        return os.path.join(self.path, '.stestr', 'times.dbm')

    def save_times(self):
        """Each test's time in this workspace's runs, as TIMES holds
        them: ``times.json`` in the workspace, to copy over TIMES when
        the suites change."""
        db = dumb.open(self._times_db, 'r')
        try:
            # A class's setUpClass is no test stestr schedules.
            times = {k.decode(): round(float(db[k]), 1) for k in db.keys()
                     if not re.match(rb'^\w+ \(', k)}
        finally:
            db.close()
        with open(os.path.join(self.path, 'times.json'), 'w') as f:
            json.dump(dict(sorted(times.items())), f, indent=1)
            f.write('\n')

    def write_config(self):
        ks = self.stack.keystone
        features = '\n'.join('%s = %s' % kv for kv in FEATURES.items())
        # The image the scenario tests upload: the stack's own.
        image_file = os.path.join(self.path, 'image.raw')
        with open(image_file, 'wb') as f:
            f.write(glance_harness.IMAGE_DATA)
        with open(self.conf, 'w') as f:
            f.write(f'''[DEFAULT]
log_file = {self.path}/tempest.log

[auth]
use_dynamic_credentials = true
admin_username = admin
admin_password = {harness.PASSWORD}
admin_project_name = admin
admin_domain_name = Default
create_isolated_networks = true

[identity]
uri_v3 = {ks.url}
auth_version = v3
region = {harness.REGION}

[identity-feature-enabled]
api_v2 = false

[service_available]
cinder = true
nova = true
glance = true
neutron = true
swift = false
horizon = false

[compute]
image_ref = {glance_harness.IMAGE_ID}
image_ref_alt = {glance_harness.IMAGE_ID}
flavor_ref = 2
flavor_ref_alt = 2
min_compute_nodes = {len(self.stack.nova.computes)}
max_microversion = {nova_harness.MICROVERSION}
build_timeout = 120

[compute-feature-enabled]
volume_multiattach = true
attach_encrypted_volume = false
console_output = false
serial_console = false
vnc_console = false

[validation]
run_validation = false
# The fake computes run no guest to log in to: a scenario test that
# would, fails in seconds rather than after 5 minutes.
connect_timeout = 2
ssh_timeout = 5

[network]
project_network_cidr = 10.100.0.0/16
project_network_mask_bits = 28

[image]
disk_formats = raw,qcow2

[scenario]
img_file = {image_file}
img_disk_format = raw

[volume]
backend_names = ursa
storage_protocol = ursa
vendor_name = cinder-ursa
volume_type = ursa
build_timeout = 120
catalog_type = block-storage
max_microversion = {harness.VOLUME_API}
# Unmanaged volumes and snapshots keep Cinder's names on the cluster.
manage_volume_ref = source-name,volume-%s
manage_snapshot_ref = source-name,snapshot-%s

[volume-feature-enabled]
{features}

[enforce_scope]
cinder = true
''')

    def run(self, regex, concurrency=4, timeout=1800):
        """``tempest run --regex REGEX``; its Results."""
        excluded = os.path.join(self.path, 'excluded.txt')
        with open(excluded, 'w') as f:
            # A test's id ends with its attributes: name[id-...,...].
            f.write(''.join('^%s(\\[.*\\])?$\n' % re.escape(t)
                            for t in EXCLUDED))
        runs = self._runs_stored()
        with open(os.path.join(self.path, 'run.log'), 'ab') as log:
            code = subprocess.run(
                [os.path.join(VENV_BIN, 'tempest'), 'run', '--regex', regex,
                 '--exclude-list', excluded,
                 '--concurrency', str(concurrency)],
                cwd=self.path, stdout=log, stderr=subprocess.STDOUT,
                timeout=timeout, check=False).returncode
        # stestr stores no run when the regex matches nothing, discovery
        # fails or the run is killed: ``stestr last`` would then give the
        # previous suite's results.
        if self._runs_stored() == runs:
            raise RuntimeError('tempest run --regex %s stored no results '
                               '(exit status %d); see %s' % (
                                   regex, code,
                                   os.path.join(self.path, 'run.log')))
        last = subprocess.run([os.path.join(VENV_BIN, 'stestr'), 'last',
                               '--subunit'], cwd=self.path,
                              capture_output=True, check=True)
        results = Results.read(io.BytesIO(last.stdout))
        self.save_times()
        if code != 0 and not results.having('fail'):
            raise RuntimeError('tempest run --regex %s exited %d with no '
                               'test failed; see %s' % (
                                   regex, code,
                                   os.path.join(self.path, 'run.log')))
        return results

    def _runs_stored(self):
        """The number of runs in the workspace's stestr repository."""
        try:
            with open(os.path.join(self.path, '.stestr', 'next-stream')) as f:
                return int(f.read())
        except FileNotFoundError:
            return 0


# Reported, not gated: the scenario tests boot servers and most then log
# in to them, which the fake computes cannot offer.
SCENARIOS = (r'^tempest\.scenario\..*volume',
             r'^cinder_tempest_plugin\.scenario')


def report(results, say=print):
    """Print the counts of a run and every test that did not pass, with
    the first line of its reason (a skip's) or the last of its traceback."""
    say(', '.join('%s %d' % kv for kv in sorted(results.counts().items())))
    for status in ('fail', 'skip'):
        for test, reason in sorted(results.having(status).items()):
            lines = reason.splitlines() or ['']
            say('  %s %s: %s' % (status, test,
                                 lines[-1] if status == 'fail' else lines[0]))


def main(argv=None):
    """Start the stack, run Tempest with each regex given (the volume
    scenario tests without one) and report each run: the report is the
    result (exit 0), failed tests included; exit 1 when the stack does
    not start or Tempest stores no results.  ``tools/run-tempest
    --scenario`` runs it."""
    regexes = (argv if argv is not None else sys.argv[1:]) or SCENARIOS
    if any(r.startswith('-') for r in regexes):
        print('usage: tools/run-tempest --scenario [REGEX...]',
              file=sys.stderr)
        return 2
    if os.geteuid() != 0 or not os.path.exists('/dev/fuse'):
        print('the stack needs root and /dev/fuse (its hosts attach '
              'volumes with ursa-attach)', file=sys.stderr)
        return 1
    base = tempfile.mkdtemp(prefix='ursa-tempest-')
    stack = harness.Stack(os.path.join(base, 'stack'))
    try:
        stack.start()
        print(stack.report(), flush=True)
        workspace = Workspace(stack, os.path.join(base, 'workspace'))
        for regex in regexes:
            t0 = time.monotonic()
            results = workspace.run(regex)
            print('%s (%.0f s):' % (regex, time.monotonic() - t0))
            report(results)
        print('logs: %s (tempest.log, run.log) and %s' % (
            workspace.path, stack.base))
    finally:
        stack.stop()
    return 0


if __name__ == '__main__':
    sys.exit(main())

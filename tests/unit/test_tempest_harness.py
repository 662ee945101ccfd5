"""The Tempest harness's bookkeeping, without a stack: results read from
a subunit v2 stream as stestr stores it, split by suite, and the test
times stestr balances its workers with."""

import io
import json
import os
import re

import subunit
from stestr import config_file as stestr_config
from stestr import scheduler
from stestr.repository import file as stestr_file

from tests.e2e import tempest_harness

PASSED = ('tempest.api.volume.test_volumes_get.VolumesGetTest.'
          'test_get[id-1,smoke]')
FAILED = ('cinder_tempest_plugin.api.volume.test_volume_revert.'
          'VolumeRevertTests.test_revert')
CLASS_SKIPPED = ('setUpClass (tempest.api.volume.admin.test_multi_backend.'
                 'VolumeMultiBackendTest)')


def _stream():
    out = io.BytesIO()
    result = subunit.StreamResultToBytes(out)
    result.status(test_id=PASSED, test_status='success')
    result.status(test_id=FAILED, test_status='fail',
                  file_name='traceback', mime_type='text/plain',
                  file_bytes=b'Traceback...\nAssertionError: not reverted')
    result.status(test_id=CLASS_SKIPPED, test_status='skip',
                  file_name='reason', mime_type='text/plain',
                  file_bytes=b'Cinder multi-backend feature disabled')
    return io.BytesIO(out.getvalue())


def test_results_split_by_suite_keep_a_class_skip_with_its_suite():
    results = tempest_harness.Results.read(_stream())
    assert results.counts() == {'success': 1, 'fail': 1, 'skip': 1}
    volume = results.only(r'^tempest\.api\.volume')
    assert set(volume.tests) == {PASSED, CLASS_SKIPPED}
    assert volume.having('skip') == {
        CLASS_SKIPPED: 'Cinder multi-backend feature disabled'}
    plugin = results.only(r'^cinder_tempest_plugin\.api')
    assert plugin.having('fail') == {
        FAILED: 'Traceback...\nAssertionError: not reverted'}
    assert not results.only(r'^tempest\.scenario').tests


def test_class_of_a_test_and_of_a_class_setup():
    assert tempest_harness.class_of(PASSED) == (
        'tempest.api.volume.test_volumes_get.VolumesGetTest')
    assert tempest_harness.class_of(CLASS_SKIPPED) == (
        'tempest.api.volume.admin.test_multi_backend.VolumeMultiBackendTest')


def _workspace(path):
    workspace = object.__new__(tempest_harness.Workspace)
    workspace.path = str(path)
    return workspace


def test_stestr_balances_with_the_times_seeded(tmp_path):
    _workspace(tmp_path).seed_times()
    with open(tempest_harness.TIMES) as f:
        times = json.load(f)
    some = sorted(times)[:3]
    # stestr asks with the ids it lists, attributes included.
    asked = ['%s[id-0,smoke]' % t for t in some] + ['tempest.api.new.T.t']
    repo = stestr_file.RepositoryFactory().open(str(tmp_path))
    got = repo.get_test_times(asked)
    assert got['known'] == {'%s[id-0,smoke]' % t: float(times[t])
                            for t in some}
    assert got['unknown'] == {'tempest.api.new.T.t'}


def test_saved_times_are_what_a_later_workspace_seeds(tmp_path):
    first = _workspace(tmp_path / 'a')
    os.makedirs(first.path)
    first.seed_times()
    first.save_times()
    with open(os.path.join(first.path, 'times.json')) as f:
        saved = json.load(f)
    with open(tempest_harness.TIMES) as f:
        assert saved == json.load(f)


def test_the_times_are_of_the_gated_suites():
    with open(tempest_harness.TIMES) as f:
        times = json.load(f)
    assert len(times) > 200
    pattern = r'^(tempest\.api\.volume|cinder_tempest_plugin\.api)\.'
    assert all(re.match(pattern, t) for t in times), [
        t for t in times if not re.match(pattern, t)]
    assert all(isinstance(s, float) and s >= 0 for s in times.values())


def test_the_classes_that_race_in_cinder_share_one_worker(tmp_path):
    workspace = _workspace(tmp_path)
    with open(tmp_path / '.stestr.conf', 'w') as f:
        f.write('[DEFAULT]\ntest_path=x\ntop_dir=y\n'
                'group_regex=([^\\.]*\\.)*\n')
    workspace.group_tests()
    conf = stestr_config.TestrConf(str(tmp_path / '.stestr.conf'))
    assert conf.test_path == 'x'
    regex = re.compile(conf.group_regex)

    def group(test_id):     # as stestr's group callback
        return regex.match(test_id).group(0)

    admin = 'tempest.api.volume.admin.'
    together = [
        admin + 'test_volume_manage.VolumeManageAdminTest.test_unmanage',
        admin + 'test_groups.GroupsTest.test_group_create_show_list_delete',
        admin + 'test_groups.GroupsV320Test.test_group_update',
        admin + 'test_group_snapshots.GroupSnapshotsTest.test_snapshot[x]']
    apart = [
        admin + 'test_volumes_list.VolumesListAdminTestJSON.test_list',
        admin + 'test_volume_manage_extra.Other.test_x',
        'tempest.api.volume.test_volumes_get.VolumesGetTest.test_get',
        'cinder_tempest_plugin.api.volume.test_volume_revert.'
        'VolumeRevertTests.test_revert']
    assert {group(t) for t in together} == {admin}
    assert [group(t) for t in apart] == [
        t.rsplit('.', 1)[0] + '.' for t in apart]
    partitions = scheduler.partition_tests(together + apart, 4, None, group)
    assert sum(set(together) <= set(p) for p in partitions) == 1

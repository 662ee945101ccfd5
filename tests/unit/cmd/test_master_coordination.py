"""ursa-master's coordination URL: the lease goes to each tooz backend as
the option that is its member timeout, as tooz's own drivers read it."""

import pytest
from oslo_config import cfg
from tooz import coordination

from cinder_ursa.cmd import master as master_cmd
from cinder_ursa.master import opts

OVERRIDDEN = ('state_dir', 'leader_lease', 'leader_renew_deadline',
              'coordination_url')


def url_for(tmp_path, coordination_url, lease=7, renew_deadline=4):
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], project='ursa-test', default_config_files=[])
    # The option group is shared by every ConfigOpts of the process, and
    # so are its overrides: cleared before returning.
    try:
        values = (str(tmp_path), lease, renew_deadline, coordination_url)
        for name, value in zip(OVERRIDDEN, values, strict=True):
            conf.set_override(name, value, 'ursa_master')
        return master_cmd.coordination_url(conf)
    finally:
        for name in OVERRIDDEN:
            conf.clear_override(name, 'ursa_master')


@pytest.mark.parametrize('given,expected', [
    # timeout is the socket timeout of Redis, etcd3 and memcached: half the
    # renew deadline unless given.
    ('redis://h:6379', 'redis://h:6379?membership_timeout=7&timeout=2'),
    ('redis://h:6379?db=2',
     'redis://h:6379?db=2&membership_timeout=7&timeout=2'),
    ('redis://h:6379?timeout=3', 'redis://h:6379?timeout=3'
                                 '&membership_timeout=7'),
    ('redis://h:6379?membership_timeout=20',
     'redis://h:6379?membership_timeout=20&timeout=2'),
    ('etcd3+http://h:2379',
     'etcd3+http://h:2379?membership_timeout=7&timeout=2'),
    ('memcached://h:11211',
     'memcached://h:11211?membership_timeout=7&timeout=2'),
    ('zookeeper://h:2181', 'zookeeper://h:2181?timeout=7'),
    ('file:///srv/coord?timeout=4', 'file:///srv/coord?timeout=4'),
])
def test_lease_goes_as_the_backends_member_timeout(tmp_path, given,
                                                   expected):
    assert url_for(tmp_path, given) == expected + '&executor=synchronous'


def test_tooz_runs_in_the_electors_thread_unless_told_otherwise(tmp_path):
    """tooz's executor thread would add a second to every stop of the
    master: the elector's own thread runs tooz's calls."""
    f = coordination.get_coordinator(url_for(tmp_path, None), b'm')
    f.start(start_heart=False)
    try:
        assert f._executor.executor.__class__.__name__ == \
            'SynchronousExecutor'
    finally:
        f.stop()
    assert url_for(tmp_path, 'redis://h?executor=threaded').endswith(
        '?executor=threaded&membership_timeout=7&timeout=2')


def test_default_is_a_file_backend_in_the_state_dir(tmp_path):
    url = url_for(tmp_path, None)
    assert url == 'file://%s/coordination?timeout=7&executor=synchronous' \
        % tmp_path
    assert (tmp_path / 'coordination').is_dir()


def test_tooz_reads_the_lease_as_member_timeout(tmp_path):
    """tooz's own drivers (not started: no server needed) read it."""
    redis = coordination.get_coordinator(
        url_for(tmp_path, 'redis://127.0.0.1:6379?timeout=3'), b'm')
    assert (redis.membership_timeout, redis.timeout) == (7, 3)
    redis = coordination.get_coordinator(
        url_for(tmp_path, 'redis://127.0.0.1:6379'), b'm')
    assert (redis.membership_timeout, redis.timeout) == (7, 2)
    f = coordination.get_coordinator(url_for(tmp_path, None), b'm')
    assert f._timeout == 7  # FileDriver's member timeout


@pytest.mark.parametrize('scheme', ['mysql', 'postgresql', 'ipc'])
def test_backends_without_member_expiry_are_refused(tmp_path, scheme):
    with pytest.raises(ValueError, match='no group membership'):
        url_for(tmp_path, '%s://h/x' % scheme)


def test_lease_option_reads_the_urls_own_value():
    assert master_cmd.lease_option('redis://h?membership_timeout=2.5') == (
        'membership_timeout', 2.5)
    assert master_cmd.lease_option('zookeeper://h') == ('timeout', None)

"""The DevStack plugin without DevStack: every phase runs under stubs of
DevStack's functions (iniset writes real ini files); the processes it asks
run_process for are then started and must form a working cluster, and the
configuration it wrote must load in cinder's, Ursa's and nova_ha's option
parsers."""

import configparser
import os
import shutil
import subprocess
import sys

import pytest
from oslo_config import cfg

from cinder_ursa.client import master as master_mod
from cinder_ursa.cmd import master as master_cmd
from cinder_ursa.common import auth
from cinder_ursa.common import opts as common_opts
from cinder_ursa.master import opts as master_opts
from cinder_ursa.volume import opts as volume_opts
from tests.fixtures.processes import ROOT
from tests.fixtures.processes import free_port_base
from tests.fixtures.wait import wait_for

BIN = os.path.dirname(sys.executable)

STUBS = r'''
function _log { echo "$*" >> "$STUB_LOG"; }
function define_plugin { _log "define_plugin|$1"; }
# As DevStack's: a service disabled in local.conf stays disabled.
function enable_service {
    local s
    for s in "$@"; do
        [[ ",${DISABLED_SERVICES:-}," == *",$s,"* ]] || ENABLED_SERVICES+=",$s"
    done
}
function disable_service {
    local s
    for s in "$@"; do
        DISABLED_SERVICES+=",$s"
        ENABLED_SERVICES=$(echo ",$ENABLED_SERVICES," | sed "s/,$s,/,/g")
    done
}
function is_service_enabled {
    local s
    for s in "$@"; do
        [[ ",$ENABLED_SERVICES," == *",$s,"* ]] && return 0
    done
    return 1
}
function install_package { _log "install_package|$*"; }
function setup_develop { _log "setup_develop|$1"; }
function sudo { "$@"; }
function echo_summary { _log "summary|$*"; }
function get_python_exec_prefix { echo "$STUB_BIN"; }
# As DevStack's: only enabled services are started and stopped.
function run_process {
    if is_service_enabled "$1"; then _log "run_process|$1|$2"; fi
}
function stop_process {
    if is_service_enabled "$1"; then _log "stop_process|$1"; fi
}
function die { echo "die|$*" >&2; exit 1; }
function database_connection_url { echo "$STUB_DB_BASE/$1?charset=utf8"; }
function recreate_database { _log "recreate_database|$1"; }
function get_or_create_user { _log "get_or_create_user|$*"; echo uid-nova-ha; }
function get_or_add_user_project_role { _log "role|$*"; }
function openstack {
    _log "openstack|$*"
    [[ "$1 $2 $3" != "volume type show" ]]
}
function iniset {
    "$PYTHON" - "$@" <<'PY'
import configparser, os, sys
path, section, key, value = sys.argv[1:5]
c = configparser.RawConfigParser()
c.optionxform = str
c.read(path)
if section != 'DEFAULT' and not c.has_section(section):
    c.add_section(section)
c.set(section, key, value)
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, 'w') as f:
    c.write(f)
PY
}
'''


def _run_phases(tmp, env, phases, localrc=()):
    """Source the plugin as DevStack does; ``localrc``: lines of
    local.conf's localrc section, run before the plugin's settings."""
    script = ['set -eu', 'source %s/stubs.sh' % tmp] + list(localrc) + [
              'source %s/devstack/settings' % ROOT,
              'source %s/devstack/override-defaults' % ROOT,
              '_log "backends|$CINDER_ENABLED_BACKENDS"']
    for phase in phases:
        script.append('source %s/devstack/plugin.sh %s' % (ROOT, phase))
    subprocess.run(['bash', '-c', '\n'.join(script)], env=env, check=True,
                   cwd=ROOT)


def _logs(tmp):
    return '\n'.join('--- %s\n%s' % (p.name, p.read_text(errors='replace'))
                     for p in sorted(tmp.glob('*.log')))


def _calls(tmp):
    return (tmp / 'calls.log').read_text().splitlines()


def test_plugin_phases_start_a_cluster_and_write_every_config(tmp_path):
    (tmp_path / 'stubs.sh').write_text(STUBS)
    (tmp_path / 'cinder.conf').write_text('[DEFAULT]\n')
    # One checked range for every port: the chunk servers listen on the
    # three ports after URSA_CS_BASE_PORT, which a port picked on its own
    # leaves to chance.
    base = free_port_base(5)
    master_port, cs_base, nbd_port = base, base, base + 4
    env = dict(os.environ,
               STUB_LOG=str(tmp_path / 'calls.log'), STUB_BIN=BIN,
               PYTHON=sys.executable, DEST=str(tmp_path / 'opt'),
               DATA_DIR=str(tmp_path / 'data'),
               STACK_USER=subprocess.run(['id', '-un'], capture_output=True,
                                         text=True).stdout.strip(),
               ENABLED_SERVICES='key,n-cpu,c-vol,c-bak,cinder',
               CINDER_ENABLED_BACKENDS='lvm:lvmdriver-1',
               CINDER_CONF=str(tmp_path / 'cinder.conf'),
               URSA_CONF_DIR=str(tmp_path / 'etc-ursa'),
               NOVA_HA_CONF_DIR=str(tmp_path / 'etc-nova-ha'),
               URSA_MASTER_PORT=str(master_port),
               URSA_CS_BASE_PORT=str(cs_base),
               URSA_NBD_PORT=str(nbd_port),
               SERVICE_HOST='127.0.0.1', SERVICE_LISTEN_ADDRESS='127.0.0.1',
               ENABLE_DEBUG_LOG_LEVEL='False',
               KEYSTONE_SERVICE_URI='http://127.0.0.1/identity',
               SERVICE_PASSWORD='secret', SERVICE_PROJECT_NAME='service',
               SERVICE_DOMAIN_NAME='Default', REGION_NAME='RegionOne')
    _run_phases(tmp_path, env, ['stack install', 'stack post-config',
                                'stack extra'])
    calls = _calls(tmp_path)
    assert 'define_plugin|cinder-ursa' in calls
    assert 'backends|lvm:lvmdriver-1,ursa:ursa' in calls
    assert 'setup_develop|%s' % (tmp_path / 'opt' / 'cinder-ursa') in calls
    started = {c.split('|')[1]: c.split('|')[2] for c in calls
               if c.startswith('run_process|')}
    assert set(started) == {'ursa-master', 'ursa-cs1', 'ursa-cs2',
                            'ursa-cs3', 'ursa-nbd', 'nova-ha-agent',
                            'nova-ha-evacuator'}
    assert 'get_or_create_user|nova-ha secret Default' in calls
    assert 'role|admin uid-nova-ha service' in calls
    assert ('openstack|volume type create --property '
            'volume_backend_name=ursa ursa') in calls

    # One master: SQLite and a file:// backend under its state_dir, the
    # bind addresses (nothing written).
    ursa_conf = configparser.RawConfigParser()
    ursa_conf.read(tmp_path / 'etc-ursa' / 'ursa.conf')
    for key in ('database_connection', 'coordination_url', 'advertise_url'):
        assert key not in ursa_conf['ursa_master']
    assert 'advertise_host' not in ursa_conf['ursa_chunkserver']
    assert ursa_conf['ursa_master']['failure_domain'] == 'server'
    assert ursa_conf['ursa']['master_url'] == \
        'http://127.0.0.1:%d' % master_port

    cinder = configparser.RawConfigParser()
    cinder.read(tmp_path / 'cinder.conf')
    assert cinder['ursa']['volume_driver'] == \
        'cinder_ursa.volume.driver.UrsaDriver'
    assert cinder['ursa']['ursa_master_urls'] == \
        'http://127.0.0.1:%d' % master_port
    # cinder-backup keeps its backups in the cluster.
    assert cinder['DEFAULT']['backup_driver'] == \
        'cinder_ursa.backup.driver.UrsaBackupDriver'
    assert cinder['DEFAULT']['backup_ursa_master_urls'] == \
        'http://127.0.0.1:%d' % master_port
    # The backend section loads in the driver's own options.
    conf = cfg.ConfigOpts()
    for _group, opts in volume_opts.list_opts():
        conf.register_opts(opts, group='ursa')
    conf([], default_config_files=[str(tmp_path / 'cinder.conf')])
    assert conf.ursa.ursa_replicas == 3

    # The processes it asked for form a cluster.
    procs = []
    try:
        for name in ('ursa-master', 'ursa-cs1', 'ursa-cs2', 'ursa-cs3',
                     'ursa-nbd'):
            log = open(tmp_path / ('%s.log' % name), 'wb')
            procs.append(subprocess.Popen(started[name].split(),
                                          stdout=log,
                                          stderr=subprocess.STDOUT))
        key = auth.load_key(str(tmp_path / 'etc-ursa' / 'cluster.key'))
        master = master_mod.MasterClient(
            ['http://127.0.0.1:%d' % master_port], key, timeout=5)

        def formed():
            try:
                up = [s for s in master.servers() if s['state'] == 'up']
            except Exception:  # noqa: BLE001 - not listening yet
                up = []
            return len(up) == 3
        wait_for(formed, 60, lambda: 'the cluster to form; process '
                 'output:\n%s' % _logs(tmp_path), interval=0.2)
        master.create_volume('devstack-check', 64 << 20)
        assert master.volume('devstack-check')['replicas'] == 3
        # nova_ha's configuration loads (its CLI reads the database).
        out = subprocess.run(
            [os.path.join(BIN, 'nova-ha'), '--config-file',
             str(tmp_path / 'etc-nova-ha' / 'nova-ha.conf'), 'status',
             '-f', 'json'], capture_output=True, text=True, check=True)
        assert '"paused": false' in out.stdout
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(20)

    _run_phases(tmp_path, env, ['unstack', 'clean'])
    calls = _calls(tmp_path)
    stopped = {c.split('|')[1] for c in calls
               if c.startswith('stop_process|')}
    assert stopped == set(started)
    assert not (tmp_path / 'data' / 'ursa').exists()
    assert not (tmp_path / 'etc-ursa').exists()


def _node_env(tmp, node, **extra):
    """The environment of DevStack on ``node`` (its own /etc and data
    directories under tmp/node)."""
    d = tmp / node
    d.mkdir()
    (d / 'stubs.sh').write_text(STUBS)
    (d / 'cinder.conf').write_text('[DEFAULT]\n')
    env = dict(os.environ,
               STUB_LOG=str(d / 'calls.log'), STUB_BIN=BIN,
               PYTHON=sys.executable, DEST=str(d / 'opt'),
               DATA_DIR=str(d / 'data'),
               STACK_USER=subprocess.run(['id', '-un'], capture_output=True,
                                         text=True).stdout.strip(),
               CINDER_CONF=str(d / 'cinder.conf'),
               URSA_CONF_DIR=str(d / 'etc-ursa'),
               NOVA_HA_CONF_DIR=str(d / 'etc-nova-ha'),
               SERVICE_LISTEN_ADDRESS='0.0.0.0',
               ENABLE_DEBUG_LOG_LEVEL='False',
               KEYSTONE_SERVICE_URI='http://127.0.0.1/identity',
               SERVICE_PASSWORD='secret', SERVICE_PROJECT_NAME='service',
               SERVICE_DOMAIN_NAME='Default', REGION_NAME='RegionOne')
    env.update(extra)
    return env


def _ini(path):
    c = configparser.RawConfigParser()
    c.read(path)
    return c


# local.conf lines of each node of the three-controller layout.
CONTROLLER = ['disable_service ursa-cs ursa-nbd nova-ha-agent']
STORAGE = ['disable_service ursa-master nova-ha-evacuator']


def test_plugin_three_controllers_configure_one_cluster(tmp_path):
    """Three controllers (the first runs DevStack's database and etcd3) and
    a storage node: a master on each controller over DevStack's database
    and etcd3, each advertising its own HOST_IP; chunk servers on the
    storage node; every client option lists the three masters."""
    ips = {'ctl1': '10.0.0.11', 'ctl2': '10.0.0.12', 'ctl3': '10.0.0.13',
           'stor1': '10.0.0.21'}
    urls = 'http://10.0.0.11:9380,http://10.0.0.12:9380,http://10.0.0.13:9380'
    db = 'mysql+pymysql://root:secret@10.0.0.11/ursa?charset=utf8'
    common = dict(SERVICE_HOST='10.0.0.11', DATABASE_TYPE='mysql',
                  STUB_DB_BASE='mysql+pymysql://root:secret@10.0.0.11',
                  URSA_MASTER_HOSTS='10.0.0.11,10.0.0.12,10.0.0.13')
    services = {'ctl1': 'key,mysql,etcd3,cinder,c-api,c-vol',
                'ctl2': '', 'ctl3': '', 'stor1': 'n-cpu'}
    for node in ('ctl1', 'ctl2', 'ctl3', 'stor1'):
        env = _node_env(tmp_path, node, HOST_IP=ips[node],
                        ENABLED_SERVICES=services[node], **common)
        _run_phases(tmp_path / node, env,
                    ['stack install', 'stack post-config', 'stack extra'],
                    STORAGE if node == 'stor1' else CONTROLLER)

    for node in ('ctl1', 'ctl2', 'ctl3', 'stor1'):
        calls = _calls(tmp_path / node)
        started = {c.split('|')[1] for c in calls
                   if c.startswith('run_process|')}
        conf = _ini(tmp_path / node / 'etc-ursa' / 'ursa.conf')
        assert conf['ursa']['master_url'] == urls
        assert conf['ursa_master']['advertise_url'] == \
            'http://%s:9380' % ips[node]
        assert conf['ursa_master']['database_connection'] == db
        assert conf['ursa_master']['coordination_url'] == \
            'etcd3+http://10.0.0.11:2379?api_version=v3'
        assert conf['ursa_chunkserver']['advertise_host'] == ips[node]
        # The database is made once, where DevStack's MySQL runs.
        assert ('recreate_database|ursa' in calls) == (node == 'ctl1')
        nova_ha = _ini(tmp_path / node / 'etc-nova-ha' / 'nova-ha.conf')
        assert nova_ha['ursa']['master_url'] == urls
        if node == 'stor1':
            assert started == {'ursa-cs1', 'ursa-cs2', 'ursa-cs3',
                               'ursa-nbd', 'nova-ha-agent'}
            assert conf['ursa_nbd']['local_chunkserver_dirs']
        else:
            assert 'ursa-master' in started
            assert not started & {'ursa-cs1', 'ursa-nbd', 'nova-ha-agent'}
            assert conf['ursa_nbd']['local_chunkserver_dirs'] == ''

    # What the services read: the lists as the option parsers load them.
    conf = cfg.ConfigOpts()
    common_opts.register_opts(conf)
    master_opts.register_opts(conf)
    conf([], default_config_files=[
        str(tmp_path / 'ctl2' / 'etc-ursa' / 'ursa.conf')])
    assert conf.ursa.master_url == urls.split(',')
    # The lease as etcd3's member timeout, half the renew deadline as its
    # request timeout (the defaults: 8 s and 5 s), tooz's calls in the
    # elector's thread.
    assert master_cmd.coordination_url(conf) == \
        'etcd3+http://10.0.0.11:2379?api_version=v3&membership_timeout=8' \
        '&timeout=2&executor=synchronous'
    cinder = _ini(tmp_path / 'ctl1' / 'cinder.conf')
    assert cinder['ursa']['ursa_master_urls'] == urls
    conf = cfg.ConfigOpts()
    for _group, opts in volume_opts.list_opts():
        conf.register_opts(opts, group='ursa')
    conf([], default_config_files=[str(tmp_path / 'ctl1' / 'cinder.conf')])
    assert conf.ursa.ursa_master_urls == urls.split(',')


def test_plugin_several_masters_without_a_database_stops(tmp_path):
    (tmp_path / 'stubs.sh').write_text(STUBS)
    env = _node_env(tmp_path, 'ctl2', HOST_IP='10.0.0.12',
                    SERVICE_HOST='10.0.0.11', ENABLED_SERVICES='',
                    URSA_MASTER_HOSTS='10.0.0.11,10.0.0.12,10.0.0.13')
    r = subprocess.run(
        ['bash', '-c', '\n'.join([
            'set -eu', 'source %s/stubs.sh' % tmp_path,
            'source %s/devstack/settings' % ROOT,
            'source %s/devstack/plugin.sh stack post-config' % ROOT])],
        env=env, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode != 0
    assert 'URSA_DATABASE_CONNECTION' in r.stderr


def test_plugin_three_controllers_elect_one_leader(tmp_path):
    """The same layout on one host (three masters on three ports over one
    SQLite file and a file:// backend, which the plugin writes when told
    to): one leader, two standbys, and the storage node's chunk servers
    register with the leader."""
    base = free_port_base(6)
    ports = {'ctl1': base, 'ctl2': base + 1, 'ctl3': base + 2}
    urls = ['http://127.0.0.1:%d' % p for p in ports.values()]
    coord = tmp_path / 'coordination'
    coord.mkdir()
    common = dict(SERVICE_HOST='127.0.0.1', SERVICE_LISTEN_ADDRESS='127.0.0.1',
                  URSA_HOST_IP='127.0.0.1', URSA_MASTER_URLS=','.join(urls),
                  URSA_DATABASE_CONNECTION='sqlite:///%s' % (
                      tmp_path / 'ursa.sqlite'),
                  URSA_COORDINATION_URL='file://%s' % coord,
                  URSA_CS_BASE_PORT=str(base + 2), ENABLED_SERVICES='')
    key = None
    for node in ('ctl1', 'ctl2', 'ctl3', 'stor1'):
        env = _node_env(tmp_path, node, URSA_MASTER_PORT=str(
            ports.get(node, base)), **common)
        if key:
            # One cluster key on every node, as the README says.
            os.makedirs(env['URSA_CONF_DIR'])
            shutil.copy(key, env['URSA_CONF_DIR'])
        _run_phases(tmp_path / node, env, ['stack post-config'],
                    STORAGE if node == 'stor1' else CONTROLLER)
        key = key or os.path.join(env['URSA_CONF_DIR'], 'cluster.key')
    started = {}
    for node in ('ctl1', 'ctl2', 'ctl3', 'stor1'):
        for c in _calls(tmp_path / node):
            if c.startswith('run_process|ursa-'):
                started['%s-%s' % (node, c.split('|')[1])] = c.split('|')[2]
    assert set(started) == {'ctl1-ursa-master', 'ctl2-ursa-master',
                            'ctl3-ursa-master', 'stor1-ursa-cs1',
                            'stor1-ursa-cs2', 'stor1-ursa-cs3',
                            'stor1-ursa-nbd'}
    master = master_mod.MasterClient(urls, auth.load_key(key), timeout=5)

    def status():
        try:
            return master.cluster_status()
        except Exception:  # noqa: BLE001 - not listening yet
            return None

    procs = []
    try:
        for name in ('ctl1-ursa-master', 'ctl2-ursa-master',
                     'ctl3-ursa-master', 'stor1-ursa-cs1', 'stor1-ursa-cs2',
                     'stor1-ursa-cs3'):
            log = open(tmp_path / ('%s.log' % name), 'wb')
            procs.append(subprocess.Popen(started[name].split(),
                                          stdout=log,
                                          stderr=subprocess.STDOUT))
            if name == 'ctl1-ursa-master':
                # The first creates the schema before the others start.
                wait_for(status, 60, lambda: 'the first master; output:'
                         '\n%s' % _logs(tmp_path), interval=0.2)

        def formed():
            st = status()
            return st if st and st['servers']['up'] == 3 and len(
                st['masters']['standbys']) == 2 else None
        st = wait_for(formed, 60, lambda: 'one leader, two standbys and '
                      'three servers; last status %s; output:\n%s' % (
                          status(), _logs(tmp_path)), interval=0.2)
        assert st['masters']['leader'] == urls[0]
        assert sorted(st['masters']['standbys']) == sorted(urls[1:])
        master.create_volume('three-controllers', 64 << 20)
        assert master.volume('three-controllers')['replicas'] == 3
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(20)


def test_plugin_is_shellcheck_clean():
    if shutil.which('shellcheck') is None:
        if os.environ.get('CI') == 'true':
            pytest.fail('shellcheck is missing (tools/run-tests installs '
                        'it)')
        pytest.skip('shellcheck is not installed')
    r = subprocess.run(['shellcheck', '-s', 'bash', 'devstack/plugin.sh',
                        'devstack/settings', 'devstack/override-defaults'],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout

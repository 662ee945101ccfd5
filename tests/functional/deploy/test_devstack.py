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
from cinder_ursa.common import auth
from cinder_ursa.volume import opts as volume_opts
from tests.fixtures.processes import ROOT
from tests.fixtures.processes import free_port_base
from tests.fixtures.wait import wait_for

BIN = os.path.dirname(sys.executable)

STUBS = r'''
function _log { echo "$*" >> "$STUB_LOG"; }
function define_plugin { _log "define_plugin|$1"; }
function enable_service {
    local s; for s in "$@"; do ENABLED_SERVICES+=",$s"; done
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


def _run_phases(tmp, env, phases):
    script = ['set -eu', 'source %s/stubs.sh' % tmp,
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
               ENABLED_SERVICES='key,n-cpu,c-vol,cinder',
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

    cinder = configparser.RawConfigParser()
    cinder.read(tmp_path / 'cinder.conf')
    assert cinder['ursa']['volume_driver'] == \
        'cinder_ursa.volume.driver.UrsaDriver'
    assert cinder['ursa']['ursa_master_urls'] == \
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

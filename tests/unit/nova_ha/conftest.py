"""nova_ha test helpers: the fake Nova, configuration, tooz members that
stand in for agents, a private redis-server."""

import os
import shutil
import socket
import subprocess
import time

import pytest
from oslo_config import cfg

from nova_ha import coordination
from nova_ha import db
from nova_ha import evacuator as evacuator_mod
from nova_ha import nova as nova_mod
from nova_ha import opts
from tests.nova_ha import fakenova


def make_conf(tmp_path, nova_url=None, backend_url=None, **evacuator):
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    conf([], project='nova-ha', default_config_files=[])
    conf.set_override('state_path', str(tmp_path))
    conf.set_override('backend_url', backend_url or 'file://%s?timeout=2'
                      % (tmp_path / 'coord'), group='coordination')
    conf.set_override('heartbeat_interval', 0.2, group='coordination')
    defaults = {'poll_interval': 0.2, 'grace_period': 1.0,
                'retry_backoff': 0.5, 'mass_failure_window': 60,
                'connection': 'sqlite:///%s' % (tmp_path / 'nova-ha.sqlite')}
    defaults.update(evacuator)
    for k, v in defaults.items():
        conf.set_override(k, v, group='evacuator')
    if nova_url:
        conf.set_override('auth_type', 'none', group='nova')
        conf.set_override('endpoint_override', nova_url, group='nova')
    return conf


def nova_conf_lines(nova_url):
    return ['[nova]', 'auth_type = none',
            'endpoint_override = %s' % nova_url]


@pytest.fixture
def fake_nova():
    f = fakenova.FakeNovaThread(step=0.1).start()
    yield f
    f.stop()


class Members:
    """tooz members standing in for the agents of compute hosts."""

    def __init__(self, conf):
        self.conf = conf
        self.coords = {}

    def join(self, host, **caps):
        c = coordination.start(self.conf, host)
        caps.setdefault('healthy', True)
        coordination.join(c, self.conf.coordination.group, caps)
        self.coords[host] = c

    def leave(self, host):
        c = self.coords.pop(host)
        c.leave_group(self.conf.coordination.group.encode()).get()
        c.stop()

    def close(self):
        for h in list(self.coords):
            c = self.coords[h]
            try:
                self.leave(h)
            except Exception:  # noqa: BLE001 - the backend may be gone
                # Stop its heartbeat thread, which would otherwise retry
                # the dead backend for the rest of the test run.
                self.coords.pop(h, None)
                coordination.stop_quietly(c)


@pytest.fixture
def members():
    made = []

    def make(conf):
        m = Members(conf)
        made.append(m)
        return m
    yield make
    for m in made:
        m.close()


def make_evacuator(conf, fences=(), member_id=None):
    return evacuator_mod.Evacuator(
        conf, nova_mod.NovaClient.from_conf(conf),
        db.Store(conf.evacuator.connection), list(fences),
        member_id=member_id)


def run_until(evacuators, predicate, timeout=30.0, what='condition'):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ev in evacuators:
            ev.step()
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError('timed out waiting for %s' % what)


def stop_processes(procs):
    """SIGTERM every process, then SIGKILL what is left after 10 s."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Redis:
    """A private redis-server on 127.0.0.1 (Debian's redis-server)."""

    def __init__(self, base):
        self.base = base
        self.port = free_port()
        self.proc = None

    @property
    def url(self):
        return 'redis://127.0.0.1:%d?membership_timeout=2&lock_timeout=2' % (
            self.port)

    def start(self):
        exe = shutil.which('redis-server')
        if exe is None:
            if os.environ.get('CI') == 'true':
                pytest.fail('redis-server is missing (tools/run-tests '
                            'installs Debian\'s redis-server)')
            pytest.skip('redis-server is not installed')
        os.makedirs(self.base, exist_ok=True)
        self.proc = subprocess.Popen(
            [exe, '--port', str(self.port), '--bind', '127.0.0.1',
             '--save', '', '--appendonly', 'no', '--dir', str(self.base)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(('127.0.0.1', self.port), 0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError('redis-server did not start')

    def stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def redis_server(tmp_path):
    r = Redis(tmp_path / 'redis').start()
    yield r
    r.stop()

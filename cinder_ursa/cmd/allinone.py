"""ursa-aio: an all-in-one Ursa cluster on 127.0.0.1, in the foreground.

Starts one ursa-master (or several with --masters: one leader, the
others standbys over the same SQLite database, electing through a tooz
file:// backend in master/coordination), N ursa-chunkserver processes
and an ursa-nbd gateway with embedded defaults (SQLite metadata, one
data directory per chunk server, a cluster key generated on first
start), starts again any of them that exits (with backoff, see
:class:`Supervisor`) and stops them on SIGINT/SIGTERM.  Starting it
again on the same --data-dir keeps every volume and byte.

Layout of --data-dir::

    cluster.key       the cluster key (mode 0600)
    ursa.conf         configuration shared by every process and the CLI
    master/           ursa.sqlite (metadata), endpoint.json, master.log
    master<N>/        master N's endpoint.json, master.conf (--masters)
    cs<N>/            chunk replicas of chunk server N, its log

For tests, ``AllInOne`` can also put the masters' metadata in a
database server (``database_url``) and their election in another tooz
backend (``coordination_url``, with ``masters`` > 1), declare a rack per
chunk server (``racks``, with ``failure_domain='rack'``) and put a
fault-injecting TCP proxy (:mod:`cinder_ursa.cmd.faultproxy`) in front
of every chunk server
(``fault_proxies=True``): the chunk server then listens on 127.0.0.2 and
advertises 127.0.0.1 on the same port, where the proxy listens, so the
master, the clients and the other chunk servers all reach it through the
proxy; ``proxies[i]`` partitions, heals or delays chunk server ``i``.

``hosts`` puts processes on hosts of their own instead of 127.0.0.1:
{role: (network namespace, address)}, the roles being ``master`` (and
``master<i>`` with several masters), ``cs<i>`` and ``nbd``.  A process
with a host runs in its namespace (``ip netns exec``), binds and
advertises its address, and a chunk server declares its role as its
host name (the failure domain ``host``); the NBD gateway then reads no
replica files directly, as on a host of its own.  The namespaces, their
links and the faults on them are the caller's (tests/fixtures/netns.py).

``metrics=True`` (``ursa-aio --metrics``) gives every process a
Prometheus ``/metrics`` endpoint on a free port of its address, the same
port each time that process starts again; :meth:`AllInOne.metrics_targets`
lists them by scrape job (the job names the alert rules in
etc/prometheus/ursa-alerts.yml expect).

Example::

    ursa-aio --data-dir /var/tmp/ursa --chunkservers 3
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

from cinder_ursa.client import master as master_mod
from cinder_ursa.cmd import faultproxy
from cinder_ursa.common import auth
from cinder_ursa.common import units
from cinder_ursa.protocol import chunkfile
from cinder_ursa.protocol import names

DEFAULT_PORT_BASE = 9380
NBD_PORT = 10809
# Where a chunk server behind a fault proxy listens (on the port the proxy
# has on 127.0.0.1).
BEHIND_PROXY = '127.0.0.2'
# With --masters N and a port base, master i >= 1 listens on port base +
# MASTER_OFFSET + i.
MASTER_OFFSET = 50
# Prometheus scrape job of each role (see AllInOne.host), as the alert
# rules (etc/prometheus/ursa-alerts.yml) name them.
METRICS_JOBS = (('master', 'ursa-master'), ('cs', 'ursa-chunkserver'),
                ('nbd', 'ursa-nbd'), ('attach', 'ursa-attach'))


class AllInOne:
    """A master and chunk servers as child processes (also the test
    fixture of the functional tests)."""

    def __init__(self, data_dir, chunkservers=3, port_base=DEFAULT_PORT_BASE,
                 database_url=None, server_timeout=15.0,
                 failure_domain='server', lease_ttl=30.0,
                 replication_timeout=5.0, extra_conf='', nbd_port=None,
                 racks=None, fault_proxies=False, masters=1,
                 coordination_url=None, hosts=None,
                 server_startup_timeout=None, metrics=False):
        if masters < 1:
            raise ValueError('masters must be at least 1')
        if racks is not None and len(racks) != chunkservers:
            raise ValueError('racks names the rack of each of the %d chunk '
                             'servers' % chunkservers)
        self.data_dir = os.path.abspath(data_dir)
        self.n = chunkservers
        self.port_base = port_base
        self.database_url = database_url
        # With several masters: their tooz backend (default: file:// in
        # master/coordination); the master adds the lease to it.
        self.coordination_url = coordination_url
        self.server_timeout = server_timeout
        self.server_startup_timeout = server_startup_timeout
        self.failure_domain = failure_domain
        self.lease_ttl = lease_ttl
        self.replication_timeout = replication_timeout
        self.extra_conf = extra_conf
        self.racks = racks
        if hosts and fault_proxies:
            raise ValueError('fault proxies listen on 127.0.0.1: not with '
                             'hosts of their own')
        # role -> (network namespace, address); see the module's doc.
        self.hosts = dict(hosts or {})
        self.fault_proxies = fault_proxies
        # Chunk server index -> text added to that server's own
        # configuration file (e.g. an [ursa] principal of its own); the
        # same for 'nbd' and 'attach', in a file of their own.
        self.cs_extra_conf = {}
        self.service_extra_conf = {}
        self.proxies = {}       # chunk server index -> ProxyControl
        self._proxy_thread = None
        self.masters = masters
        self.master_procs = {}  # master index -> process
        self.nbd_proc = None
        self.nbd_port = None
        self.attach_proc = None
        self.attach_host = 'aio-host'
        self.attach_dir = os.path.join(self.data_dir, 'attached')
        # host -> (process, mount dir) of the other hosts' ursa-attach
        # (start_attach with a host: a live migration's two hypervisors).
        self.attach_agents = {}
        # NBD's standard port with the default port base, else dynamic.
        self._nbd_port = nbd_port if nbd_port is not None else (
            NBD_PORT if port_base == DEFAULT_PORT_BASE else 0)
        self.cs_procs = {}
        self.master_urls = []
        self.key_file = os.path.join(self.data_dir, 'cluster.key')
        self.conf_file = os.path.join(self.data_dir, 'ursa.conf')
        self.key = None
        # Master 0 on port_base, master i on port_base + MASTER_OFFSET + i.
        self.master_ports = [
            (port_base + (MASTER_OFFSET + i if i else 0)) if port_base else 0
            for i in range(masters)]
        # Whether a stop was asked for (the launcher's signal handler):
        # starts in progress then give up at once.
        self.stopping = lambda: False
        self.metrics = metrics
        # role -> its /metrics port, picked once and kept, so a process
        # started again is scraped where it was; roles started so far.
        self.metrics_ports = {}
        self._metrics_started = set()

    # --- configuration -----------------------------------------------------

    def host(self, role):
        """(network namespace or None, address) of ``role`` (``master``,
        ``master<i>``, ``cs<i>``, ``nbd``)."""
        return self.hosts.get(role, (None, '127.0.0.1'))

    @staticmethod
    def master_role(i):
        return 'master%s' % (i or '')

    def _port(self, offset):
        return self.port_base + offset if self.port_base else 0

    def write_config(self):
        os.makedirs(self.data_dir, exist_ok=True)
        self.key = auth.create_key_file(self.key_file)
        lines = [
            '[DEFAULT]',
            'debug = false',
            '',
            '[ursa]',
            'cluster_key_file = %s' % self.key_file,
            'master_url = %s' % ','.join(
                'http://%s:%d' % (self.host(self.master_role(i))[1], p)
                for i, p in enumerate(self.master_ports)),
            '',
            '[ursa_master]',
            'bind_host = %s' % self.host('master')[1],
            'bind_port = %d' % self.master_ports[0],
            'state_dir = %s' % os.path.join(self.data_dir, 'master'),
            'failure_domain = %s' % self.failure_domain,
            'server_timeout = %s' % self.server_timeout,
            'lease_ttl = %s' % self.lease_ttl,
        ]
        lines += self._metrics_conf('master')
        if self.server_startup_timeout is not None:
            lines.append('server_startup_timeout = %s'
                         % self.server_startup_timeout)
        if self.database_url:
            lines.append('database_connection = %s' % self.database_url)
        if self.masters > 1:
            # One database and one coordination backend for all masters.
            master0 = os.path.join(self.data_dir, 'master')
            if not self.database_url:
                lines.append('database_connection = sqlite:///%s' %
                             os.path.join(master0, 'ursa.sqlite'))
            lines.append('coordination_url = %s' % (
                self.coordination_url or
                'file://' + os.path.join(master0, 'coordination')))
        lines += [
            '',
            '[ursa_chunkserver]',
            'bind_host = 127.0.0.1',
            'replication_timeout = %s' % self.replication_timeout,
            'reserved_bytes = 0',
            '',
            '[ursa_attach]',
            'host = %s' % self.attach_host,
            'mount_dir = %s' % self.attach_dir,
            'state_dir = %s' % os.path.join(self.data_dir, 'attach'),
            'poll_interval = 0.2',
        ] + self._metrics_conf('attach') + [
            '',
            '[ursa_nbd]',
            'bind_host = %s' % self.host('nbd')[1],
            'bind_port = %d' % self._nbd_port,
            'state_dir = %s' % os.path.join(self.data_dir, 'nbd'),
            # A development cluster: every volume may be opened and
            # listed (no Cinder attaches them first).  In network
            # namespaces the gateway has a host of its own, not
            # loopback; those test clusters accept plain NBD there.
            'require_attachment = false',
            'list_exports = true',
            'allow_insecure_network = %s' % bool(self.hosts),
            # On hosts of their own, the gateway shares no disk with the
            # chunk servers.
            'local_chunkserver_dirs = %s' % ','.join(
                self.cs_dir(i) for i in range(self.n)
                if not self.hosts),
        ] + self._metrics_conf('nbd') + [
            '',
            self.extra_conf,
        ]
        with open(self.conf_file, 'w') as f:
            f.write('\n'.join(lines) + '\n')

    def _metrics_conf(self, role):
        """The option lines that give ``role`` its /metrics endpoint (none
        without ``metrics``)."""
        if not self.metrics:
            return []
        port = self.metrics_ports.get(role)
        if port is None:
            # The kernel's choice, then released: another process may
            # take it before ours binds it (rare, and fine for tests).
            # Chosen on loopback: a host of its own (a network
            # namespace) has all its ports free.
            with socket.socket() as s:
                s.bind(('127.0.0.1', 0))
                port = self.metrics_ports[role] = s.getsockname()[1]
        return ['metrics_host = %s' % self.host(role)[1],
                'metrics_port = %d' % port]

    def metrics_targets(self):
        """{Prometheus job: ['address:port', ...]} of the /metrics
        endpoints of the processes started so far (also those that died
        since: they are down, not gone), by job: ursa-master,
        ursa-chunkserver, ursa-nbd, ursa-attach."""
        out = {}
        for prefix, job in METRICS_JOBS:
            roles = sorted(
                (r for r in self._metrics_started
                 if r.rstrip('0123456789') == prefix),
                key=lambda r: int(r[len(prefix):] or 0))
            if roles:
                out[job] = ['%s:%d' % (self.host(r)[1], self.metrics_ports[r])
                            for r in roles]
        return out

    # --- processes ---------------------------------------------------------

    def _spawn(self, module, log_name, args=(), role=None):
        cmd = [sys.executable, '-m', module, '--config-file', self.conf_file]
        cmd += list(args)
        if role in self.metrics_ports:
            self._metrics_started.add(role)
        netns = self.host(role)[0]
        if netns is not None:
            # ip netns exec execs the command: the process is ours, its
            # pid the one signals and endpoint files name.
            cmd = ['ip', 'netns', 'exec', netns] + cmd
        with open(os.path.join(self.data_dir, log_name), 'ab') as log:
            return subprocess.Popen(cmd, stdout=log,
                                    stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)

    def _wait_file(self, path, proc, what, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stopping():
                proc.kill()
                proc.wait()
                raise RuntimeError('stopping: %s not waited for' % what)
            if proc.poll() is not None:
                raise RuntimeError('%s exited with status %s; see its log in '
                                   '%s' % (what, proc.returncode,
                                           self.data_dir))
            try:
                with open(path) as f:
                    info = json.load(f)
                if info.get('pid') == proc.pid:
                    return info
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        raise RuntimeError('%s did not start within %d s; see its log in %s'
                           % (what, timeout, self.data_dir))

    def _start_service(self, name):
        """Start ursa-<name> with its state in <data-dir>/<name>, as
        attribute ``<name>_proc`` (set at once, so a failed start is seen
        as that process's exit); return the endpoint it wrote."""
        state = os.path.join(self.data_dir, name)
        os.makedirs(state, exist_ok=True)
        args = []
        if name in self.service_extra_conf:
            own = os.path.join(state, name + '.conf')
            with open(own, 'w') as f:
                f.write(self.service_extra_conf[name])
            args = ['--config-file', own]
        proc = self._spawn('cinder_ursa.cmd.' + name, name + '.log', args,
                           role=name)
        setattr(self, name + '_proc', proc)
        return self._wait_file(os.path.join(state, 'endpoint.json'), proc,
                               'ursa-' + name)

    @property
    def master_proc(self):
        """The process of master 0 (the only one by default)."""
        return self.master_procs.get(0)

    @property
    def master_url(self):
        return self.master_urls[0] if self.master_urls else None

    def master_dir(self, i):
        return os.path.join(self.data_dir, 'master%s' % (i or ''))

    def start_master(self, i=0):
        """Start master ``i`` (its state in master/, master1/, ...); return
        its URL."""
        state = self.master_dir(i)
        os.makedirs(state, exist_ok=True)
        args = []
        if i:
            own = os.path.join(state, 'master.conf')
            lines = ['[ursa_master]', 'state_dir = %s' % state,
                     'bind_port = %d' % self.master_ports[i],
                     'bind_host = %s' % self.host(self.master_role(i))[1]]
            lines += self._metrics_conf(self.master_role(i))
            with open(own, 'w') as f:
                f.write('\n'.join(lines) + '\n')
            args = ['--config-file', own]
        proc = self._spawn('cinder_ursa.cmd.master',
                           'master%s.log' % (i or ''), args,
                           role=self.master_role(i))
        self.master_procs[i] = proc
        info = self._wait_file(os.path.join(state, 'endpoint.json'), proc,
                               'ursa-master %d' % i if i else 'ursa-master')
        url = info['url']
        while len(self.master_urls) <= i:
            self.master_urls.append(None)
        self.master_urls[i] = url
        port = int(url.rsplit(':', 1)[1])
        if port != self.master_ports[i]:
            # A dynamic port is kept from now on, so a restarted master is
            # found where the chunk servers and the CLI expect it.
            self.master_ports[i] = port
            self.write_config()
        return url

    def start_masters(self):
        return [self.start_master(i) for i in range(self.masters)]

    def _cs_port(self, i):
        """Fixed with --port-base; else the port it had before, if any,
        so a restarted chunk server keeps its address."""
        if self.port_base:
            return self.port_base + 1 + i
        try:
            with open(os.path.join(self.cs_dir(i), 'endpoint.json')) as f:
                return json.load(f)['port']
        except (FileNotFoundError, ValueError, KeyError):
            return 0

    def cs_dir(self, i):
        return os.path.join(self.data_dir, 'cs%d' % i)

    def _proxied_port(self, i):
        """The port of chunk server i's fault proxy (started if need be):
        free on 127.0.0.1, where the proxy listens, and on BEHIND_PROXY,
        where the chunk server will."""
        if i in self.proxies:
            return self.proxies[i].port
        if self._proxy_thread is None:
            self._proxy_thread = faultproxy.ProxyThread()
        fixed = self._cs_port(i)
        for _ in range(1 if fixed else 50):
            port = fixed
            if not port:
                with socket.socket() as s:
                    s.bind(('127.0.0.1', 0))
                    port = s.getsockname()[1]
            try:
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((BEHIND_PROXY, port))
                self.proxies[i] = self._proxy_thread.add(
                    '127.0.0.1', port, BEHIND_PROXY, port)
                return port
            except OSError:
                if fixed:
                    raise
        raise RuntimeError('no port free on both 127.0.0.1 and %s'
                           % BEHIND_PROXY)

    def start_chunkserver(self, i, wait=True):
        info = self._chunkserver_endpoint(*self._launch_chunkserver(i))
        if wait:
            self.wait_servers_up({info['uuid']})
        return info

    def _chunkserver_endpoint(self, i, proc):
        """The endpoint chunk server ``i`` (``proc``) wrote once up."""
        return self._wait_file(os.path.join(self.cs_dir(i), 'endpoint.json'),
                               proc, 'ursa-chunkserver %d' % i)

    def _launch_chunkserver(self, i):
        """Start chunk server ``i``: (i, its process)."""
        d = self.cs_dir(i)
        os.makedirs(d, exist_ok=True)
        own = os.path.join(d, 'chunkserver.conf')
        lines = ['[ursa_chunkserver]', 'data_dir = %s' % d]
        if self.fault_proxies:
            lines += ['bind_host = %s' % BEHIND_PROXY,
                      'advertise_host = 127.0.0.1',
                      'bind_port = %d' % self._proxied_port(i)]
        else:
            lines.append('bind_port = %d' % self._cs_port(i))
        if 'cs%d' % i in self.hosts:
            address = self.host('cs%d' % i)[1]
            lines += ['bind_host = %s' % address,
                      'advertise_host = %s' % address,
                      'host = cs%d' % i]
        if self.racks is not None:
            lines.append('rack = %s' % self.racks[i])
        lines += self._metrics_conf('cs%d' % i)
        if i in self.cs_extra_conf:
            lines.append(self.cs_extra_conf[i])
        with open(own, 'w') as f:
            f.write('\n'.join(lines) + '\n')
        proc = self._spawn('cinder_ursa.cmd.chunkserver', 'cs%d.log' % i,
                           ['--config-file', own], role='cs%d' % i)
        self.cs_procs[i] = proc
        return i, proc

    def wait_servers_up(self, uuids, timeout=30.0):
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            up = {s['uuid'] for s in client.servers() if s['state'] == 'up'}
            if set(uuids) <= up:
                return
            if time.monotonic() > deadline:
                raise RuntimeError('chunk servers %s did not register'
                                   % (set(uuids) - up))
            time.sleep(0.05)

    def start_nbd(self):
        """Start the NBD gateway; return its port."""
        info = self._start_service('nbd')
        self.nbd_port = info['port']
        if self._nbd_port != self.nbd_port:
            # Kept from now on: a restarted gateway serves where it did.
            self._nbd_port = self.nbd_port
            self.write_config()
        return self.nbd_port

    def start_attach(self, host=None, mount_dir=None):
        """Start ursa-attach (FUSE, needs root and /dev/fuse) for host
        ``attach_host``; volumes attached to it appear in attach_dir.
        With ``host``, another one, as that host (its files in
        ``mount_dir``, default <data-dir>/attached-<host>; its state and
        log as attach-<host>): two hypervisors of one cluster.  Returns
        the mount directory."""
        if host is None:
            self._start_service('attach')
            return self.attach_dir
        name = 'attach-%s' % host
        state = os.path.join(self.data_dir, name)
        os.makedirs(state, exist_ok=True)
        mount_dir = mount_dir or os.path.join(self.data_dir,
                                              'attached-%s' % host)
        own = os.path.join(state, name + '.conf')
        with open(own, 'w') as f:
            f.write('[ursa_attach]\nhost = %s\nmount_dir = %s\n'
                    'state_dir = %s\n' % (host, mount_dir, state))
        proc = self._spawn('cinder_ursa.cmd.attach', name + '.log',
                           ['--config-file', own])
        self.attach_agents[host] = (proc, mount_dir)
        self._wait_file(os.path.join(state, 'endpoint.json'), proc,
                        'ursa-attach of host %s' % host)
        return mount_dir

    def _stop_attach(self, proc, mount_dir, timeout):
        # First, and alone: it flushes what it has open.  (One a test
        # stopped, SIGSTOP, would not hear SIGTERM.)
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            subprocess.run(['umount', '-l', mount_dir], capture_output=True)

    def start(self, nbd=False):
        self.write_config()
        self.start_masters()
        # Started together, waited for together: each takes a second or
        # so to import and bind, which they spend side by side.
        launched = [self._launch_chunkserver(i) for i in range(self.n)]
        uuids = {self._chunkserver_endpoint(i, proc)['uuid']
                 for i, proc in launched}
        self.wait_servers_up(uuids)
        if nbd:
            self.start_nbd()
        return self

    def client(self):
        return master_mod.MasterClient(list(self.master_urls), self.key)

    def kill_chunkserver(self, i, sig=signal.SIGKILL):
        proc = self.cs_procs.pop(i)
        proc.send_signal(sig)
        proc.wait(30)

    def kill_master(self, sig=signal.SIGKILL, i=0):
        proc = self.master_procs.pop(i)
        proc.send_signal(sig)
        proc.wait(30)

    def stop(self, timeout=15.0, kill=False):
        """Stop every process: ursa-attach first (SIGTERM: it flushes
        what it has open and unmounts), then the others with SIGTERM
        (each stops cleanly; killed after ``timeout``), or with
        ``kill`` at once with SIGKILL, for a cluster whose state is
        thrown away (a test's, at its end)."""
        procs = list(self.cs_procs.values())
        if self.nbd_proc is not None:
            procs.insert(0, self.nbd_proc)
        if self.attach_proc is not None:
            self._stop_attach(self.attach_proc, self.attach_dir, timeout)
            self.attach_proc = None
        for proc, mount_dir in self.attach_agents.values():
            if proc.poll() is None:
                self._stop_attach(proc, mount_dir, timeout)
        self.attach_agents.clear()
        procs += [p for _, p in sorted(self.master_procs.items())]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.cs_procs.clear()
        self.master_procs.clear()
        self.nbd_proc = None
        if self._proxy_thread is not None:
            self._proxy_thread.close()
            self._proxy_thread = None
            self.proxies.clear()

    def children(self):
        """{name: process} of the services this launcher started."""
        out = {}
        for i, p in sorted(self.master_procs.items()):
            out['ursa-master %d' % i if i else 'ursa-master'] = p
        for i, p in sorted(self.cs_procs.items()):
            out['ursa-chunkserver %d' % i] = p
        if self.nbd_proc is not None:
            out['ursa-nbd'] = self.nbd_proc
        return out

    def restart(self, name):
        """Start child ``name`` (as :meth:`children` names it) again, on
        the ports and data it had."""
        if name == 'ursa-master':
            self.start_master()
        elif name.startswith('ursa-master '):
            self.start_master(int(name.split()[1]))
        elif name == 'ursa-nbd':
            self.start_nbd()
        elif name.startswith('ursa-chunkserver '):
            self.start_chunkserver(int(name.split()[1]), wait=False)
        else:
            raise ValueError('no child named %r' % name)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class Supervisor:
    """Restarts the children of an :class:`AllInOne` that exit, with
    backoff, as systemd's ``Restart=always`` does: after FIRST_DELAY
    seconds, then twice as long after each failed run up to MAX_DELAY,
    and FIRST_DELAY again once a child has run STABLE_AFTER seconds.

    ``poll()`` is called from the launcher's loop; it reports each exit
    and restart on ``out``.
    """

    FIRST_DELAY = 1.0
    MAX_DELAY = 30.0
    STABLE_AFTER = 60.0

    def __init__(self, aio, out=sys.stderr, clock=time.monotonic):
        self.aio = aio
        self.out = out
        self.clock = clock
        self.restarts = {}      # name -> restarts so far
        self._delay = {}        # name -> delay before its next restart
        self._due = {}          # name -> when it is restarted
        self._started = {}      # name -> when it was last (re)started

    def _say(self, text):
        print('ursa-aio: ' + text, file=self.out, flush=True)

    def poll(self):
        now = self.clock()
        for name, proc in self.aio.children().items():
            self._started.setdefault(name, now)
            if proc.poll() is None or name in self._due:
                continue
            ran = now - self._started[name]
            delay = self.FIRST_DELAY if ran >= self.STABLE_AFTER else min(
                self._delay.get(name, self.FIRST_DELAY / 2) * 2,
                self.MAX_DELAY)
            self._delay[name] = delay
            self._due[name] = now + delay
            self._say('%s exited (%s) after %.0f s; restarting it in %.0f s '
                      '(its log is in %s)' % (name, _status(proc.returncode),
                                              ran, delay, self.aio.data_dir))
        for name, due in sorted(self._due.items()):
            if due > now:
                continue
            if self.aio.stopping():
                return
            del self._due[name]
            self._started[name] = self.clock()
            self.restarts[name] = self.restarts.get(name, 0) + 1
            try:
                self.aio.restart(name)
            except (RuntimeError, OSError) as e:
                self._say('%s did not start again: %s' % (name, e))
                continue  # its process is dead: the next poll retries
            self._say('%s restarted (restart %d)' % (name,
                                                     self.restarts[name]))


def _status(returncode):
    if returncode is not None and returncode < 0:
        try:
            return 'killed by %s' % signal.Signals(-returncode).name
        except ValueError:
            return 'killed by signal %d' % -returncode
    return 'status %s' % returncode


def _demo(aio, name):
    """Create the demo volume on first start and show it serving I/O."""
    client = aio.client()
    try:
        vol = client.volume(name)
    except Exception:  # noqa: BLE001 - NotFound on first start
        vol = client.create_volume(name, units.Gi)
        print('Created volume %s (%s, %d replicas)' % (
            name, units.format_size(vol['size']), vol['replicas']))
    from cinder_ursa.client import sync
    payload = b'hello from ursa-aio %d\n' % os.getpid()
    payload += bytes(chunkfile.BLOCK - len(payload))
    with sync.SyncCluster(list(aio.master_urls), aio.key) as cluster:
        with cluster.open_volume(name) as v:
            v.write(0, payload)
            v.flush()
            back = v.read(0, len(payload))
    ok = 'OK' if back == payload else 'MISMATCH'
    print('Wrote and read back 4 KiB of volume %s through %d replicas: %s'
          % (name, vol['replicas'], ok))


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='ursa-aio',
        description='Run an all-in-one Ursa cluster (one master, N chunk '
                    'servers) on 127.0.0.1 in the foreground. Restarting on '
                    'the same --data-dir keeps all volumes and data.',
        epilog='Example: ursa-aio --data-dir /var/tmp/ursa --chunkservers 3')
    parser.add_argument('--data-dir', required=True,
                        help='Where metadata, chunk replicas, the cluster key '
                             'and logs live.')
    parser.add_argument('--chunkservers', type=int, default=3,
                        help='Number of chunk servers (default 3).')
    parser.add_argument('--port-base', type=int, default=DEFAULT_PORT_BASE,
                        help='Master REST port; chunk server N listens on '
                             'port-base + 1 + N (default %d).'
                             % DEFAULT_PORT_BASE)
    parser.add_argument('--masters', type=int, default=1,
                        help='Number of ursa-master processes (default 1): '
                             'one leader, the others standbys taking over '
                             'if it fails; master N >= 1 listens on '
                             'port-base + %d + N.' % MASTER_OFFSET)
    parser.add_argument('--metrics', action='store_true',
                        help='Give every process a Prometheus /metrics '
                             'endpoint on a free port of 127.0.0.1 and '
                             'print them by scrape job.')
    parser.add_argument('--demo-volume', default='demo',
                        help='Volume created on first start and written '
                             'once to show the cluster serving '
                             '(default "demo"; "" to skip).')
    args = parser.parse_args(argv)
    if args.chunkservers < 1:
        parser.error('--chunkservers must be at least 1')
    if args.masters < 1:
        parser.error('--masters must be at least 1')
    problem = args.demo_volume and names.name_problem('--demo-volume',
                                                      args.demo_volume)
    if problem:
        parser.error(problem)

    aio = AllInOne(args.data_dir, args.chunkservers, args.port_base,
                   masters=args.masters, metrics=args.metrics)
    stopping = []
    aio.stopping = lambda: bool(stopping)

    def on_signal(signum, frame):
        stopping.append(signum)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        aio.start(nbd=True)
        print('ursa-aio: cluster up in %s' % aio.data_dir)
        print('  ursa-master        %s  (REST API, metadata in %s)' % (
            aio.master_url, os.path.join(aio.data_dir, 'master',
                                         'ursa.sqlite')))
        for i, url in enumerate(aio.master_urls[1:], 1):
            print('  ursa-master %d      %s  (same database, leader '
                  'election through tooz)' % (i, url))
        for i in sorted(aio.cs_procs):
            with open(os.path.join(aio.cs_dir(i), 'endpoint.json')) as f:
                info = json.load(f)
            print('  ursa-chunkserver %d 127.0.0.1:%d  (data in %s)' % (
                i, info['port'], aio.cs_dir(i)))
        print('  ursa-nbd           nbd://127.0.0.1:%d/<volume>  (NBD '
              'gateway)' % aio.nbd_port)
        if args.metrics:
            print('Prometheus targets (job: /metrics addresses):')
            for job, targets in aio.metrics_targets().items():
                print('  %-18s %s' % (job, ' '.join(targets)))
        if args.demo_volume:
            _demo(aio, args.demo_volume)
            print('Volume %s is served at nbd://127.0.0.1:%d/%s' % (
                args.demo_volume, aio.nbd_port, args.demo_volume))
        cli = os.path.join(os.path.dirname(sys.executable), 'ursa')
        if not os.path.exists(cli):
            cli = 'ursa'
        print('Try, in another shell:')
        print('  export URSA_CONFIG=%s' % aio.conf_file)
        print('  %s cluster status; %s volume create vol1 10G' % (cli, cli))
        print('Stop with Ctrl-C (SIGINT) or SIGTERM.', flush=True)
        supervisor = Supervisor(aio)
        while not stopping:
            supervisor.poll()
            time.sleep(0.2)
        return 0
    except (RuntimeError, OSError) as e:
        print('ursa-aio: %s' % e, file=sys.stderr)
        return 1
    finally:
        print('ursa-aio: stopping', flush=True)
        aio.stop()


if __name__ == '__main__':
    sys.exit(main())

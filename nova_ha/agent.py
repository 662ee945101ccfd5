"""nova-ha-agent: the two heartbeats of its compute host, its health, and
its isolation response.

Heartbeats, each on a thread of its own (so that neither a hung backend
nor a slow health check delays the other):

- **network**: membership of the tooz group, kept by a tooz heartbeat
  every ``[coordination] heartbeat_interval`` (the member expires after
  the backend's member timeout);
- **storage**: ``PUT /v1/hosts/{host}/heartbeat`` to the Ursa master every
  ``[agent] storage_heartbeat_interval`` (the evacuator judges it lost
  after ``[evacuator] storage_timeout``).  Its answer says whether nova_ha
  fenced the host.

The evacuator fails a host only when both are silent; one alone makes it
*degraded*.  Health (nova-compute running, the hypervisor answering,
maintenance) is published in the member's capabilities.

Isolation: when neither heartbeat has got through for
``isolation_timeout`` (and ``isolation_check_command``, if set, fails
too), or when the master answers that nova_ha fenced this host, the
agent applies its isolation response once (see :mod:`nova_ha.isolation`).
"""

import logging
import os
import shlex
import subprocess
import threading
import time

import tooz

from cinder_ursa.client import master as ursa_master
from nova_ha import coordination
from nova_ha import fence
from nova_ha import isolation

LOG = logging.getLogger(__name__)

# A fence nova_ha made says so in its reason (recovery.py).
NOVA_HA_FENCE = 'nova-ha recovery'


def process_running(pattern):
    """Whether a process has ``pattern`` in its command line."""
    me = os.getpid()
    for pid in os.listdir('/proc'):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                cmd = f.read().replace(b'\0', b' ').decode('utf-8', 'replace')
        except OSError:
            continue
        if pattern in cmd:
            return True
    return False


class Beat:
    """One heartbeat: ``send()`` every ``interval`` seconds on a thread of
    its own; remembers when it last got through and its last answer."""

    def __init__(self, name, send, interval, stopping):
        self.name = name
        self.send = send
        self.interval = interval
        self.stopping = stopping
        self.started = time.monotonic()
        self.last_ok = None
        self.answer = None
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name='%s-heartbeat' % name)

    def start(self):
        self.thread.start()

    def silent_for(self, now=None):
        """Seconds since it last got through (since it started, if never
        did)."""
        now = time.monotonic() if now is None else now
        return now - (self.last_ok if self.last_ok is not None
                      else self.started)

    def _run(self):
        while not self.stopping.is_set():
            t0 = time.monotonic()
            try:
                self.answer = self.send()
            except Exception as e:  # noqa: BLE001 - a missed heartbeat
                if self.error is None or str(e) != str(self.error):
                    LOG.warning('%s heartbeat failed: %s', self.name, e)
                self.error = e
            else:
                if self.error is not None:
                    LOG.info('%s heartbeat gets through again', self.name)
                self.error = None
                self.last_ok = time.monotonic()
            self.stopping.wait(max(0.0, self.interval -
                                   (time.monotonic() - t0)))


class Agent:
    def __init__(self, conf, responder=None):
        self.conf = conf
        self.host = conf.agent.host
        self.group = conf.coordination.group
        self.stopping = threading.Event()
        self.coord = None
        self._connector = coordination.Connector(self._connect)
        self._published = None
        self.master = None
        if conf.agent.check_storage and fence.ursa_configured(conf):
            # A host principal named after this host (least rights: it
            # may beat for its own host only), a nova_ha principal's key
            # or the cluster key.
            interval = conf.agent.storage_heartbeat_interval
            self.master = ursa_master.MasterClient.from_conf(
                conf, timeout=max(2.0, 2 * interval))
        self.responder = responder or isolation.Responder(conf)
        self.network = Beat('coordination', self._tooz_beat,
                            conf.coordination.heartbeat_interval,
                            self.stopping)
        self.storage = None
        if self.master is not None:
            self.storage = Beat('storage', self._storage_beat,
                                conf.agent.storage_heartbeat_interval,
                                self.stopping)
        self.responded = None       # why, once the response was applied
        self._watcher = threading.Thread(target=self._watch, daemon=True,
                                         name='isolation-watch')
        self._refresher = threading.Thread(target=self._refresh,
                                           daemon=True,
                                           name='ha-instances-refresh')

    # --- heartbeats ----------------------------------------------------------

    def _tooz_beat(self):
        coord = self.coord
        if coord is None:
            raise ConnectionError('not connected to the coordination '
                                  'backend')
        coord.heartbeat()

    def _storage_beat(self):
        return self.master.host_heartbeat(
            self.host, self.conf.agent.storage_heartbeat_interval)

    # --- health --------------------------------------------------------------

    def health(self):
        """Each check: True, False, or None when not configured."""
        a = self.conf.agent
        checks = {'nova_compute': None, 'hypervisor': None, 'storage': None}
        if a.nova_compute_process:
            checks['nova_compute'] = process_running(a.nova_compute_process)
        if a.hypervisor_check_command:
            try:
                checks['hypervisor'] = subprocess.run(
                    shlex.split(a.hypervisor_check_command),
                    capture_output=True, timeout=10,
                    check=False).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                checks['hypervisor'] = False
        if self.storage is not None:
            checks['storage'] = self.storage.silent_for() <= max(
                3 * self.storage.interval, 2.0)
        maintenance = None
        try:
            with open(a.maintenance_file) as f:
                maintenance = f.read().strip() or 'maintenance'
        except OSError:
            pass
        return {'host': self.host, 'checks': checks,
                'healthy': all(v is not False for v in checks.values()),
                'maintenance': maintenance,
                # The evacuator judges the storage heartbeat of a host
                # that says it sends one (and for how long it is silent
                # before it counts as lost, it knows from its own
                # storage_timeout).
                'storage_heartbeat': (self.storage.interval if self.storage
                                      else None)}

    # --- the tooz group ------------------------------------------------------

    def _connect(self):
        coord = coordination.start(self.conf, self.host, heart=False)
        caps = self.health()
        coordination.join(coord, self.group, caps)
        self._published = caps
        LOG.info('Host %s joined group %s', self.host, self.group)
        return coord

    def _publish(self, caps):
        group = self.group.encode()
        try:
            self.coord.update_capabilities(group, caps).get()
        except tooz.NotImplemented:
            # tooz's file driver keeps capabilities from the join only.
            self.coord.leave_group(group).get()
            self.coord.join_group(group, caps).get()
        self._published = caps

    def run(self):
        self.network.start()
        if self.storage is not None:
            self.storage.start()
        else:
            LOG.warning('Host %s sends no storage heartbeat ([ursa] '
                        'master_url and a key, and [agent] check_storage): '
                        'the evacuator then waits for Nova to report its '
                        'nova-compute down before it fails this host',
                        self.host)
        self._watcher.start()
        self._refresher.start()
        last = None
        while not self.stopping.is_set():
            try:
                if self.coord is None:
                    self.coord = self._connector.result()
                if self.coord is not None:
                    caps = self.health()
                    if caps != self._published:
                        self._publish(caps)
                    state = (caps['healthy'], caps['maintenance'])
                    if state != last:
                        LOG.info('Host %s: healthy=%s checks=%s '
                                 'maintenance=%s', self.host,
                                 caps['healthy'], caps['checks'],
                                 caps['maintenance'])
                        last = state
            except Exception as e:  # noqa: BLE001 - the agent must go on
                if not coordination.is_backend_error(e):
                    LOG.exception('Agent check failed')
                else:
                    LOG.warning('Coordination backend: %s; reconnecting',
                                e)
                    self._drop()
            self.stopping.wait(self.conf.agent.check_interval)
        self._leave()

    def _drop(self):
        if self.coord is not None:
            coordination.stop_quietly(self.coord)
        self.coord = None

    def _leave(self):
        if self.coord is None:
            return
        try:
            self.coord.leave_group(self.group.encode()).get()
            LOG.info('Host %s left group %s', self.host, self.group)
        except Exception as e:  # noqa: BLE001 - leaving is best effort
            LOG.warning('Leaving group %s: %s', self.group, e)
        self._drop()

    def stop(self):
        self.stopping.set()

    # --- isolation -----------------------------------------------------------

    def isolated(self, now=None):
        """Why this host is isolated (neither heartbeat got through for
        isolation_timeout, and isolation_check_command does not say it
        is connected), or None."""
        if self.storage is None:
            # One heartbeat alone cannot tell the host's isolation from
            # the coordination backend's outage.
            return None
        if self.network.last_ok is None and self.storage.last_ok is None:
            # Never reached anything since it started: a host booting
            # before its controllers (a whole site powering up) is not
            # isolated, and its instances are not running yet.
            return None
        now = time.monotonic() if now is None else now
        t = self.conf.agent.isolation_timeout
        net, sto = self.network.silent_for(now), self.storage.silent_for(now)
        if net < t or sto < t:
            return None
        if isolation.check_command_says_connected(
                self.conf.agent.isolation_check_command):
            return None
        return ('isolated: no heartbeat got through for %.0f s (the '
                'coordination backend for %.0f s, the Ursa master for '
                '%.0f s)' % (min(net, sto), net, sto))

    def fenced(self):
        """Why this host is fenced by nova_ha (its master's last answer),
        or None."""
        answer = self.storage.answer if self.storage is not None else None
        if answer and answer.get('fenced') and (
                answer.get('fence_reason') or '').startswith(NOVA_HA_FENCE):
            return 'fenced by nova_ha (%s)' % answer['fence_reason']
        return None

    def _watch(self):
        interval = min(1.0, self.conf.agent.isolation_timeout / 4.0)
        while not self.stopping.wait(interval):
            try:
                self._judge()
            except Exception:  # noqa: BLE001 - the watch must go on
                LOG.exception('Judging isolation failed')

    def _judge(self):
        why = self.fenced() or self.isolated()
        if why is None:
            if self.responded is not None and self.storage.silent_for() < \
                    self.conf.agent.isolation_timeout:
                LOG.warning('Host %s: heartbeats get through again and it '
                            'is not fenced; the instances the isolation '
                            'response stopped stay stopped (an operator '
                            'starts them)', self.host)
                self.responded = None
            return
        if self.responded is None:
            self.responded = why
            done = self.responder.respond(why)
            LOG.critical('Host %s: isolation response applied: %s',
                         self.host, done)

    def _refresh(self):
        """Learn this host's HA instances, on a thread of its own: a
        call to Nova that hangs must not delay the isolation response."""
        while not self.stopping.wait(min(1.0, self.responder.every)):
            if self.responded is not None:
                continue
            try:
                self.responder.refresh()
            except Exception as e:  # noqa: BLE001 - kept for next time
                LOG.warning('Refreshing the HA instance list: %s', e)

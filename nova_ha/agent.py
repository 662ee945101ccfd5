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
import tooz.coordination

from cinder_ursa import exception as ursa_exc
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
    its own; remembers when it last got through, when the far end last
    answered at all (``answered(error)`` says which errors are answers:
    a refusal proves the path works), and its last answer."""

    def __init__(self, name, send, interval, stopping, answered=None):
        self.name = name
        self.send = send
        self.interval = interval
        self.stopping = stopping
        self.answered = answered or (lambda error: False)
        self.started = time.monotonic()
        self.last_ok = None
        self.last_reached = None
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

    def unreached_for(self, now=None):
        """Seconds since the far end last answered anything."""
        now = time.monotonic() if now is None else now
        return now - (self.last_reached if self.last_reached is not None
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
                if self.answered(e):
                    self.last_reached = time.monotonic()
            else:
                if self.error is not None:
                    LOG.info('%s heartbeat gets through again', self.name)
                self.error = None
                self.last_ok = self.last_reached = time.monotonic()
            self.stopping.wait(max(0.0, self.interval -
                                   (time.monotonic() - t0)))


def _master_answered(error):
    """Whether a failed storage heartbeat still had an answer from a
    master (a refusal, a standby naming the leader): not a cut path."""
    return isinstance(error, ursa_exc.UrsaError) and not isinstance(
        error, ursa_exc.UrsaConnectionError)


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
            # One round over the masters a beat (no wait for an
            # election): a standby's answer is an answer, and the next
            # beat comes soon.
            self.master = ursa_master.MasterClient.from_conf(
                conf, timeout=max(2.0, 2 * interval), failover_wait=0)
        self.responder = responder or isolation.Responder(conf)
        self.network = Beat('coordination', self._tooz_beat,
                            conf.coordination.heartbeat_interval,
                            self.stopping)
        self.storage = None
        if self.master is not None:
            self.storage = Beat('storage', self._storage_beat,
                                conf.agent.storage_heartbeat_interval,
                                self.stopping, answered=_master_answered)
        self.responded = None       # why, once the response was applied
        # No isolation is judged before this (monotonic): after the
        # agent's start, and after a stall of its own (a SIGSTOP, a host
        # frozen), its heartbeats get the time to try again first.
        self._settle_until = time.monotonic() + self._settle()
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

    def _settle(self):
        beats = [self.network] + ([self.storage] if self.storage else [])
        return 2 * max(b.interval for b in beats) + 1.0

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
                # that says it sends one: said once one got through (a
                # host whose beats are refused, its principal wrong, is
                # judged the old way).
                'storage_heartbeat': (
                    self.storage.interval if self.storage is not None
                    and self.storage.last_ok is not None else None)}

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

    def _check_membership(self, caps):
        """Join again if the group lost this member while its heartbeats
        went on (etcd3 and ZooKeeper drop a member whose lease or session
        expired during an outage, and a later heartbeat only opens a new
        one): a live host would otherwise stay out of the group."""
        try:
            self.coord.get_member_capabilities(
                self.group.encode(), self.host.encode()).get()
        except tooz.coordination.MemberNotJoined:
            LOG.warning('Host %s is no longer in group %s (its membership '
                        'expired during an outage): joining again',
                        self.host, self.group)
            coordination.join(self.coord, self.group, caps)
            self._published = caps

    def run(self):
        if self.storage is not None and \
                self.conf.agent.isolation_response == 'stop' and \
                not isolation.nova_configured(self.conf):
            LOG.warning('isolation_response = stop, but [nova] is not '
                        'configured: the agent cannot learn which instances '
                        'are HA, and an isolated host stops none')
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
                    else:
                        self._check_membership(caps)
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

    def _say_stopping(self):
        """A last storage heartbeat saying the agent stops on purpose:
        the evacuator then judges its host the old way (its agent gone and
        Nova's nova-compute down), not as dead from the silence."""
        if self.storage is None or self.storage.last_ok is None:
            return
        try:
            self.master.host_heartbeat(
                self.host, self.conf.agent.storage_heartbeat_interval,
                stopping=True)
        except ursa_exc.UrsaError as e:
            LOG.warning('Telling the Ursa master this agent stops: %s', e)

    def _leave(self):
        self._say_stopping()
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
        if self.network.last_ok is None or self.storage.last_ok is None:
            # One of them never got through since the agent started: a
            # host booting before its controllers (a site powering up),
            # or a heartbeat refused from the start (a wrong key) is
            # nothing to judge isolation by.
            return None
        now = time.monotonic() if now is None else now
        if now < self._settle_until:
            return None
        t = self.conf.agent.isolation_timeout
        # (An answer that refuses a heartbeat proves the path works.)
        net = self.network.unreached_for(now)
        sto = self.storage.unreached_for(now)
        if net < t or sto < t:
            return None
        if isolation.check_connected(
                self.conf.agent.isolation_check_command):
            return None
        return ('isolated: no heartbeat got through for %.0f s (the '
                'coordination backend for %.0f s, the Ursa master for '
                '%.0f s)' % (min(net, sto), net, sto))

    def fenced(self):
        """Why this host is fenced by nova_ha (its master's last answer),
        or None."""
        answer = self.storage.answer if self.storage is not None else None
        # The master keeps every reason it was given ("; " between):
        # nova_ha's is found after an operator's fence.
        if answer and answer.get('fenced') and any(
                r.startswith(NOVA_HA_FENCE) for r in (
                    answer.get('fence_reason') or '').split('; ')):
            return 'fenced by nova_ha (%s)' % answer['fence_reason']
        return None

    def _watch(self):
        interval = min(1.0, self.conf.agent.isolation_timeout / 4.0)
        last = time.monotonic()
        while not self.stopping.wait(interval):
            now = time.monotonic()
            if now - last > 2 * interval + 1.0:
                # This process did not run for a while (stopped, frozen):
                # what its heartbeats last saw is that old.
                LOG.warning('The agent did not run for %.1f s; isolation '
                            'is judged again once its heartbeats tried',
                            now - last)
                self._settle_until = now + self._settle()
            last = now
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

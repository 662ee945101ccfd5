"""nova-ha-evacuator: runs on two or more controllers; the one holding the
tooz leader lock acts.

Each poll the leader judges every compute host by its two heartbeats,
neither of them Nova's: its agent's membership of the tooz group (the
network heartbeat) and its agent's heartbeats to the Ursa master (the
storage heartbeat, lost after ``storage_timeout``).  A host that lost
both is *suspect*, and failed once it stays so for ``grace_period`` (at
once if Nova also reports its nova-compute down: a third signal, which
only ever speeds things up).  One lost and the other alive is
*degraded*: shown, never acted on.  A host that sends no storage
heartbeat (or while the Ursa master cannot say) is failed the old way:
agent gone and nova-compute down for the grace period.  Many hosts'
storage heartbeats lost at once trip the mass-failure guard (the master
is out of their reach, not every host dead).

A failed host's recovery then goes, one persisted step after the other,
through::

    fencing -> disabling -> evacuating -> done | failed

fencing      Ursa revokes the host's leases (its writes are refused from
             then on) and/or a fence command runs.  No fence, no
             evacuation (unless [evacuator] fence_required = False).
disabling    Nova's compute service is forced down and disabled in one
             call, and the instances policy selects are recorded.
evacuating   Instances are evacuated in priority order, each under a tooz
             lock, and tracked through their migration records; failed
             attempts are retried with backoff.

Every step is kept in the database, so a new leader continues where the
old one stopped, and never asks Nova twice for the same evacuation.  When
more hosts fail within a window than the mass-failure guard allows, the
evacuator pauses instead: a partition is likelier than that many dead
hosts, and an operator decides (``nova-ha resume``).
"""

import logging
import os
import socket
import threading
import time

from cinder_ursa import exception as ursa_exc
from nova_ha import coordination
from nova_ha import db
from nova_ha import fence as fence_mod
from nova_ha import metrics as metrics_mod
from nova_ha import nova as nova_mod
from nova_ha import recovery

_when = db.format_time

LOG = logging.getLogger(__name__)

LEADER_LOCK = b'nova-ha-evacuator-leader'
EVACUATORS_GROUP = 'nova-ha-evacuators'


class Evacuator(recovery.RecoveryMixin):
    def __init__(self, conf, nova, store, fences, metrics=None,
                 member_id=None, storage=None):
        self.conf = conf
        # The Ursa master that keeps the hosts' storage heartbeats (a
        # MasterClient), or None.
        self.storage = storage
        self.ev = conf.evacuator
        self.nova = nova
        self.store = store
        self.fences = fences
        self.metrics = metrics or metrics_mod.Metrics()
        self.member_id = member_id or '%s-evacuator-%d' % (
            socket.gethostname(), os.getpid())
        self.group = conf.coordination.group
        self.coord = None
        self._connector = coordination.Connector(
            lambda: self._connect())
        self.leader_lock = None
        self.is_leader = False
        self.stopping = threading.Event()
        self._said = {}
        # While many hosts' storage heartbeats are lost at once (see
        # _storage_states).
        self._storage_mass = False

    # --- the loop ----------------------------------------------------------

    def run(self):
        while not self.stopping.is_set():
            self.step()
            self.stopping.wait(self.ev.poll_interval)
        self.close()

    def step(self):
        """One poll: take the lead if it is free, act if we lead."""
        try:
            if self.coord is None:
                self.coord = self._connector.result()
                if self.coord is None:
                    return
                self.metrics.coordination_up.set(1)
            if not self.is_leader:
                self.leader_lock = self.coord.get_lock(LEADER_LOCK)
                if self.leader_lock.acquire(blocking=False):
                    self.is_leader = True
                    self.metrics.leader.set(1)
                    LOG.info('%s is the acting evacuator', self.member_id)
            if self.is_leader:
                self.tick()
            self.metrics.coordination_up.set(1)
        except nova_mod.NovaError as e:
            LOG.error('Nova API: %s; retrying in %.0f s', e,
                      self.ev.poll_interval)
        except Exception as e:  # noqa: BLE001 - the evacuator must go on
            if not coordination.is_backend_error(e):
                LOG.exception('Evacuator poll failed')
                return
            # Without the backend we cannot tell dead hosts from our own
            # isolation: act on nothing until it is back.
            self._say('backend', logging.ERROR,
                      'Lost the coordination backend (%s: %s): evacuating '
                      'nothing until it is back', type(e).__name__, e)
            self.metrics.coordination_up.set(0)
            self._drop_coordination()
            return
        self._said.pop('backend', None)

    def _connect(self):
        coord = coordination.start(self.conf, self.member_id)
        coordination.join(coord, EVACUATORS_GROUP)
        return coord

    def _drop_coordination(self):
        held = [self.leader_lock] if self.is_leader else []
        self.is_leader = False
        self.leader_lock = None
        self.metrics.leader.set(0)
        if self.coord is not None:
            coordination.stop_quietly(self.coord, held)
        self.coord = None

    def close(self):
        if self.coord is not None and self.is_leader:
            try:
                self.leader_lock.release()
            except Exception as e:  # noqa: BLE001
                if not coordination.is_backend_error(e):
                    raise
            self.is_leader = False
        self._drop_coordination()

    def stop(self):
        self.stopping.set()

    def _say(self, key, level, msg, *args):
        """Log a recurring condition once, not every poll."""
        text = msg % args
        if self._said.get(key) != text:
            self._said[key] = text
            LOG.log(level, text)

    # --- one poll as leader --------------------------------------------------

    def tick(self):
        now = time.time()
        members = coordination.members(self.coord, self.group)
        self.store.set_control('leader', {'member': self.member_id,
                                          'at': now})
        services = {s['host']: s for s in self.nova.compute_services()}
        view = self._storage_view()
        known = self.store.hosts()
        active = {r['host']: r for r in self.store.recoveries(active=True)}
        storage = self._storage_states(services, members, known, active,
                                       view)
        for host, svc in services.items():
            self._observe(host, svc, members.get(host), known.get(host),
                          active, services, storage[host], now)
        paused = self.store.paused()
        self.metrics.paused.set(1 if paused else 0)
        if paused:
            self._say('paused', logging.WARNING,
                      'Paused (%s): no host is fenced or evacuated until an '
                      'operator runs "nova-ha resume"', paused['reason'])
        else:
            self._said.pop('paused', None)
            for rec in self.store.recoveries(active=True):
                if rec['state'] != 'held':
                    self._advance(rec, services)
        self._enable_returned(services)
        counts = {}
        for h in self.store.hosts().values():
            counts[h['state']] = counts.get(h['state'], 0) + 1
        self.metrics.set_hosts(counts)

    def _storage_view(self):
        """The Ursa master's view of the hosts' storage heartbeats
        ({'leading_for', 'hosts'}), or None when there is no master to
        ask or it does not answer (every host's storage heartbeat is then
        unknown)."""
        if self.storage is None:
            return None
        try:
            view = self.storage.host_heartbeats()
        except ursa_exc.UrsaError as e:
            self.metrics.storage_up.set(0)
            self._say('storage', logging.ERROR,
                      'ALERT The Ursa master does not answer (%s): the '
                      'storage heartbeats of every host are unknown, so '
                      'hosts are judged by their agent and Nova alone', e)
            return None
        self.metrics.storage_up.set(1)
        if self._said.pop('storage', None):
            LOG.warning('The Ursa master answers again: storage heartbeats '
                        'are judged again')
        return view

    @staticmethod
    def _storage_interval(caps, known):
        """The storage heartbeat interval the host's agent announced
        (remembered once it is gone), or None: it sends none."""
        if caps is not None:
            return caps.get('storage_heartbeat')
        return known['storage_heartbeat'] if known else None

    def _storage_state(self, host, interval, view):
        """alive | lost | unknown | none (the host sends none) | stopped
        (its agent said it stops on purpose)."""
        if interval is None:
            return 'none'
        if view is None:
            return 'unknown'
        beat = view['hosts'].get(host)
        # An agent that announced a longer interval is given three.
        timeout = max(self.ev.storage_timeout, 3 * interval)
        if beat is not None and beat.get('stopping'):
            return 'stopped'
        if beat is not None and beat['age'] < timeout:
            return 'alive'
        if view['leading_for'] < timeout:
            # A master that took the lead (or started) this recently has
            # not heard every host yet.
            return 'unknown'
        return 'lost'

    def _storage_states(self, services, members, known, active, view):
        """Every host's storage heartbeat state.  When so many hosts lost
        theirs at once that the mass-failure guard would trip, the Ursa
        master is out of their reach, not every host dead: the guard
        pauses the evacuator once (the operator's resume is not undone
        while it lasts), and every host is judged the old way meanwhile
        (unknown: its agent gone and Nova's nova-compute down)."""
        states = {h: self._storage_state(
            h, self._storage_interval(members.get(h), known.get(h)), view)
            for h in services}
        watched = {h for h in services if h not in active and not (
            known.get(h) and (known[h]['state'] in (
                'failed', 'returned', 'maintenance')
                or known[h]['maintenance']))}
        lost = {h for h in watched if states[h] == 'lost'}
        beating = {h for h in watched if states[h] in ('alive', 'lost')}
        mass = len(lost) >= 2 and bool(beating) and (
            (self.ev.mass_failure_hosts
             and len(lost) > self.ev.mass_failure_hosts) or
            len(lost) / len(beating) > self.ev.mass_failure_fraction)
        if not mass:
            if self._storage_mass:
                LOG.warning('Storage heartbeats are back on most hosts: '
                            'they are judged again')
            self._storage_mass = False
            return states
        if not self._storage_mass:
            self._storage_mass = True
            reason = ('mass failure: the storage heartbeats of %d of %d '
                      'hosts are lost (%s); the Ursa master is likelier out '
                      'of their reach than the hosts dead'
                      % (len(lost), len(beating), ', '.join(sorted(lost))))
            if not self.store.paused():
                self.store.pause(reason, by='mass-failure guard')
                self.metrics.guard_trips.inc()
            LOG.critical('ALERT %s. Until they are back, hosts are judged '
                         'by their agent and Nova alone; nothing is fenced '
                         'or evacuated until an operator checks and runs '
                         '"nova-ha resume"', reason)
        return {h: 'unknown' if s == 'lost' else s
                for h, s in states.items()}

    def _observe(self, host, svc, caps, known, active, services, storage,
                 now):
        in_group = caps is not None
        nova_down = svc['state'] == 'down'
        prev = known['state'] if known else None
        since = known['since'] if known else now
        # The agent's word on maintenance outlives the agent: a host
        # shut down for maintenance is not a failed host.
        agent_maint = (caps.get('maintenance') if in_group else
                       known and known['agent_maintenance'])
        maintenance = (known and known['maintenance']) or agent_maint
        # Whether it sends a storage heartbeat, its agent said (and that
        # outlives the agent too).
        interval = self._storage_interval(caps, known)
        note = None
        if host in active:
            state = 'failed'
            note = 'recovery %d: %s' % (active[host]['id'],
                                        active[host]['state'])
        elif maintenance:
            state = 'maintenance'
            note = agent_maint or 'set by an operator'
        elif prev in ('failed', 'returned'):
            # Recovered before: it stays disabled until it is enabled.
            state = 'returned' if in_group else 'failed'
            note = ('agent back; "nova-ha host enable %s" re-enables it'
                    % host if in_group else 'instances evacuated')
        elif not in_group and (storage == 'lost' or (
                storage in ('none', 'unknown', 'stopped') and nova_down)):
            # Both heartbeats lost (or, without a storage heartbeat to
            # judge, the agent gone and Nova's nova-compute down).
            state = 'suspect'
            why = ('agent gone from the group and storage heartbeat lost'
                   if storage == 'lost' else
                   'agent gone from the group and nova-compute down '
                   '(storage heartbeat %s)' % storage)
            # Nova agreeing (a third signal) skips the grace period.
            grace = 0 if storage == 'lost' and nova_down else \
                self.ev.grace_period
            if prev != 'suspect':
                since = now
                LOG.warning('Host %s: %s; failed if it stays so for %.0f s',
                            host, why, grace)
            if now - since >= grace:
                state, note = self._confirm_failed(host, since, services,
                                                   now)
            else:
                note = why
        elif not in_group or nova_down or storage == 'lost':
            state = 'degraded'
            if not in_group:
                note = 'agent gone from the group, %s' % (
                    'storage heartbeat alive' if storage == 'alive' else
                    'stopped on purpose, nova-compute up'
                    if storage == 'stopped' else
                    'nova-compute up (storage heartbeat %s)' % storage)
            elif storage == 'lost':
                note = ('storage heartbeat lost, agent in the group (the '
                        'host does not reach the Ursa master?)')
            else:
                note = 'nova-compute down, agent alive'
        else:
            state = 'ok'
            if not caps.get('healthy', True):
                note = 'unhealthy: %s' % ', '.join(
                    k for k, v in caps.get('checks', {}).items()
                    if v is False)
        if state != prev:
            since = now if state != 'suspect' else since
            if prev is not None:
                LOG.info('Host %s: %s -> %s%s', host, prev, state,
                         ' (%s)' % note if note else '')
        self.store.save_host(
            host, state=state, since=since, in_group=in_group,
            nova_state=svc['state'], nova_status=svc['status'],
            health=None if caps is None else str(caps.get('checks')),
            agent_maintenance=agent_maint or None, note=note,
            storage_heartbeat=interval, storage=storage)

    def _confirm_failed(self, host, since, services, now):
        if self.ev.ursa_second_opinion:
            ursa = [f for f in self.fences
                    if isinstance(f, fence_mod.UrsaFence)]
            if ursa:
                try:
                    live = ursa[0].live_leases(host)
                except Exception as e:  # noqa: BLE001 - no opinion
                    return 'suspect', 'Ursa gives no opinion: %s' % e
                if live:
                    return 'suspect', ('still renews %d Ursa lease(s): '
                                       'alive' % live)
        failing = {h for h, x in self.store.hosts().items()
                   if x['state'] == 'suspect'} | {host}
        failing |= {r['host'] for r in self.store.recoveries()
                    if r['created_at'] >= now - self.ev.mass_failure_window}
        total = max(len(services), 1)
        mass = (self.ev.mass_failure_hosts
                and len(failing) > self.ev.mass_failure_hosts) or \
            len(failing) / total > self.ev.mass_failure_fraction
        if mass and not self.store.paused():
            reason = ('mass failure: %d of %d compute hosts failing within '
                      '%.0f s (%s); a network partition is likelier than '
                      'dead hosts' % (len(failing), total,
                                      self.ev.mass_failure_window,
                                      ', '.join(sorted(failing))))
            self.store.pause(reason, by='mass-failure guard')
            self.metrics.guard_trips.inc()
            LOG.critical('ALERT %s. Nothing is fenced or evacuated until an '
                         'operator checks and runs "nova-ha resume"', reason)
        state = 'held' if self.store.paused() else 'fencing'
        rid = self.store.create_recovery(host, state, detected_at=since)
        LOG.warning('Host %s failed (down since %s, grace %.0f s): recovery '
                    '%d %s', host, _when(since), self.ev.grace_period, rid,
                    'held by the pause' if state == 'held' else 'starts')
        return 'failed', 'recovery %d: %s' % (rid, state)

    # --- hosts coming back ---------------------------------------------------

    def _enable_returned(self, services):
        for name, h in self.store.hosts().items():
            if not h['enable_requested'] and not (
                    self.ev.auto_enable_recovered_hosts
                    and h['state'] == 'returned'):
                continue
            svc = services.get(name)
            if h['state'] != 'returned' or svc is None:
                self._say(('enable', name), logging.WARNING,
                          'Host %s cannot be enabled yet: it is %s (its '
                          'agent must be back first)', name, h['state'])
                continue
            pending = [m for m in self.nova.evacuations(name)
                       if m['status'] == 'done']
            if pending:
                self._say(('enable', name), logging.WARNING,
                          'Host %s: waiting for its nova-compute to clean '
                          'up %d evacuated instance(s) before enabling it '
                          '(start nova-compute there)', name, len(pending))
                continue
            for f in self.fences:
                f.unfence(name)
            self.nova.enable(svc['id'])
            self.store.save_host(name, state='ok', since=time.time(),
                                 enable_requested=False, note='re-enabled')
            self._said.pop(('enable', name), None)
            LOG.warning('Host %s re-enabled (unfenced, compute service up '
                        'and enabled)', name)

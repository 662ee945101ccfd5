"""A failed host's recovery, one persisted step after the other:
fencing -> disabling -> evacuating -> done | failed (see
:mod:`nova_ha.evacuator`, whose leader runs it)."""

import logging
import time

from nova_ha import db
from nova_ha import fence as fence_mod
from nova_ha import nova as nova_mod

_when = db.format_time

LOG = logging.getLogger(__name__)

# Nova creates an evacuation's migration record before its API call
# returns.  A request recorded as sent whose record is still missing after
# this long never reached Nova (its sender died first): send it again.
LOST_REQUEST_AFTER = 15.0
REBUILDING = ('rebuilding', 'rebuild_block_device_mapping',
              'rebuild_spawning')


def _priority(props, key):
    try:
        return int(props.get(key, 0))
    except (TypeError, ValueError):
        return 0


class RecoveryMixin:
    """The recovery steps of :class:`nova_ha.evacuator.Evacuator` (which
    provides ``conf``, ``nova``, ``store``, ``fences``, ``metrics`` and
    ``_say``)."""

    def _advance(self, rec, services):
        if rec['state'] == 'fencing':
            if self._back_before_fence(rec):
                return
            if not self._fence(rec):
                return
            rec['state'] = 'disabling'
        if rec['state'] == 'disabling':
            svc = services.get(rec['host'])
            if svc is None:
                self._say(('gone', rec['id']), logging.ERROR,
                          'Recovery %d: Nova no longer lists a compute '
                          'service on %s', rec['id'], rec['host'])
                return
            self._disable_and_select(rec, svc)
            rec['state'] = 'evacuating'
        if rec['state'] == 'evacuating':
            self._evacuate(rec, services)

    def _back_before_fence(self, rec):
        """A host whose agent (or storage heartbeat) is back before it
        was fenced (a recovery held by the guard and resumed later, or a
        fence that kept failing) is alive: its recovery is cancelled."""
        h = self.store.hosts().get(rec['host'])
        if h is None or not (h['in_group'] or h['storage'] == 'alive'):
            return False
        why = 'back before it was fenced (%s)' % (
            'its agent in the group' if h['in_group'] else
            'its storage heartbeat alive')
        self.store.update_recovery(rec['id'], state='cancelled',
                                   finished_at=time.time(), message=why)
        self.store.save_host(rec['host'], state='ok', since=time.time(),
                             note='recovery %d cancelled: %s'
                             % (rec['id'], why))
        self.metrics.recoveries.labels('cancelled').inc()
        LOG.warning('Recovery %d of %s cancelled: the host is %s', rec['id'],
                    rec['host'], why)
        return True

    def _fence(self, rec):
        host = rec['host']
        if not self.fences:
            if self.ev.fence_required:
                self._say(('nofence', rec['id']), logging.ERROR,
                          'Host %s is not fenced: no fence method is '
                          'configured ([ursa] master_url with cluster key, '
                          'or [evacuator] fence_command), so nothing is '
                          'evacuated (fence_required = True)', host)
                self.store.update_recovery(
                    rec['id'], message='waiting: no fence method configured')
                return False
            self.store.update_recovery(
                rec['id'], state='disabling', fenced_at=time.time(),
                fenced_by='nothing (fence_required = False)')
            LOG.warning('Host %s evacuated unfenced: fence_required = '
                        'False', host)
            return True
        done = []
        for f in self.fences:
            try:
                what = f.fence(host, 'nova-ha recovery %d' % rec['id'])
            except fence_mod.FenceError as e:
                self.metrics.fences.labels(f.name, 'error').inc()
                self._say(('fence', rec['id']), logging.ERROR,
                          'Host %s: %s. Not evacuating it until it is '
                          'fenced; retrying', host, e)
                self.store.update_recovery(rec['id'], message=str(e))
                return False
            self.metrics.fences.labels(f.name, 'ok').inc()
            done.append('%s (%s)' % (f.name, what))
        LOG.warning('Host %s fenced: %s', host, '; '.join(done))
        self.store.update_recovery(rec['id'], state='disabling',
                                   fenced_by='; '.join(done), message=None,
                                   fenced_at=time.time())
        return True

    def _select(self, server):
        """(priority, None) to evacuate, or (priority, why not)."""
        props = nova_mod.server_props(server)
        prio = _priority(props, self.ev.priority_key)
        if not nova_mod.selected(props, self.ev.policy, self.ev.ha_key):
            return prio, 'not HA-enabled (%s)' % self.ev.ha_key
        return prio, None

    def _disable_and_select(self, rec, svc):
        host = rec['host']
        self.nova.force_down(svc['id'], 'nova-ha: failed, recovery %d at %s'
                             % (rec['id'], _when(time.time())))
        self.store.update_recovery(rec['id'], disabled_at=time.time())
        LOG.warning('Compute service of %s forced down and disabled', host)
        rows = []
        existing = {r['uuid'] for r in self.store.instances(rec['id'])}
        for server in self.nova.servers_on_host(host):
            if server['id'] in existing:
                continue
            prio, why = self._select(server)
            rows.append({'uuid': server['id'], 'name': server.get('name'),
                         'priority': prio,
                         'status': 'skipped' if why else 'pending',
                         'message': why, 'attempts': 0,
                         'next_attempt_at': 0, 'after_migration': 0,
                         'finished_at': time.time() if why else None})
            if why:
                LOG.info('Instance %s (%s) on %s is not evacuated: %s',
                         server.get('name'), server['id'], host, why)
        self.store.add_instances(rec['id'], rows)
        self.store.update_recovery(rec['id'], state='evacuating')
        LOG.warning('Recovery %d of %s: %d instance(s) to evacuate, %d '
                    'skipped', rec['id'], host,
                    sum(r['status'] == 'pending' for r in rows),
                    sum(r['status'] == 'skipped' for r in rows))

    def _target(self, services, source):
        for h in self.ev.reserved_hosts:
            svc = services.get(h)
            if svc and h != source and svc['state'] == 'up':
                return h
        return None

    def _evacuate(self, rec, services):
        host = rec['host']
        rows = self.store.instances(rec['id'])
        migrations = None
        now = time.time()
        for row in rows:
            if row['status'] == 'evacuating':
                if migrations is None:
                    migrations = self.nova.evacuations(host)
                self._track(rec, row, migrations, now)
            elif row['status'] == 'pending' and \
                    row['next_attempt_at'] <= now:
                if migrations is None:
                    migrations = self.nova.evacuations(host)
                self._start(rec, row, migrations, services)
        rows = self.store.instances(rec['id'])
        if all(r['status'] in ('done', 'failed', 'skipped') for r in rows):
            self._finish(rec, rows)

    def _set(self, rec, row, status, **values):
        values['status'] = status
        if status in ('done', 'failed', 'skipped'):
            values['finished_at'] = time.time()
            self.metrics.evacuations.labels(status).inc()
        self.store.update_instance(rec['id'], row['uuid'], **values)
        row.update(values)

    def _start(self, rec, row, migrations, services):
        uuid, host = row['uuid'], rec['host']
        lock = self.coord.get_lock(b'nova-ha-instance-' + uuid.encode())
        if not lock.acquire(blocking=False):
            return  # another evacuator works on it: look again next poll
        try:
            server = self.nova.server(uuid)
            if server is None:
                self._set(rec, row, 'skipped', message='deleted')
                return
            where = nova_mod.server_host(server)
            if where != host:
                self._set(rec, row, 'done', dest_host=where,
                          message='already on %s' % where)
                return
            vm_state = server.get('OS-EXT-STS:vm_state')
            task = server.get('OS-EXT-STS:task_state')
            if task in REBUILDING:
                # An evacuation is under way (sent by a leader that died
                # before it could record it): follow it.
                self._set(rec, row, 'evacuating', requested_at=time.time())
                return
            if task:
                self._retry(rec, row, 'task %s in progress' % task,
                            count=False)
                return
            if vm_state not in nova_mod.EVACUABLE:
                self._set(rec, row, 'skipped',
                          message='vm_state %s cannot be evacuated'
                          % vm_state)
                LOG.warning('Instance %s (%s) is not evacuated: vm_state %s',
                            row['name'], uuid, vm_state)
                return
            after = max([m['id'] for m in migrations
                         if m['instance_uuid'] == uuid], default=0)
            target = self._target(services, host)
            # Recorded before it is sent: a leader taking over never sends
            # it a second time.
            self._set(rec, row, 'evacuating', attempts=row['attempts'] + 1,
                      requested_at=time.time(), after_migration=after,
                      dest_host=target)
            try:
                self.nova.evacuate(uuid, target)
            except nova_mod.NovaError as e:
                if e.status == 404:
                    self._set(rec, row, 'skipped', message='deleted')
                else:
                    self._retry(rec, row, str(e))
                return
            LOG.info('Evacuating instance %s (%s, priority %d) from %s%s, '
                     'attempt %d', row['name'], uuid, row['priority'], host,
                     ' to %s' % target if target else '', row['attempts'])
        finally:
            lock.release()

    def _retry(self, rec, row, why, count=True):
        attempts = row['attempts']
        if count and attempts >= self.ev.max_attempts:
            self._set(rec, row, 'failed', message=why)
            LOG.error('Instance %s (%s) was not evacuated after %d '
                      'attempt(s): %s', row['name'], row['uuid'], attempts,
                      why)
            return
        delay = self.ev.retry_backoff * (2 ** max(attempts - 1, 0))
        self._set(rec, row, 'pending', message=why,
                  next_attempt_at=time.time() + delay)
        LOG.warning('Instance %s (%s): %s; retrying in %.0f s', row['name'],
                    row['uuid'], why, delay)

    def _track(self, rec, row, migrations, now):
        mine = [m for m in migrations if m['instance_uuid'] == row['uuid']
                and m['id'] > row['after_migration']]
        if not mine:
            if now - (row['requested_at'] or 0) > LOST_REQUEST_AFTER:
                server = self.nova.server(row['uuid'])
                if server is not None and not server.get(
                        'OS-EXT-STS:task_state'):
                    LOG.warning('Instance %s (%s): the evacuate request '
                                'never reached Nova; sending it again',
                                row['name'], row['uuid'])
                    self._set(rec, row, 'pending',
                              attempts=max(row['attempts'] - 1, 0))
            return
        m = mine[-1]
        status = m['status']
        if status in ('done', 'completed'):
            self._set(rec, row, 'done', migration_id=m['id'],
                      dest_host=m.get('dest_compute'), message=None)
            LOG.info('Instance %s (%s) evacuated from %s to %s',
                     row['name'], row['uuid'], rec['host'],
                     m.get('dest_compute'))
        elif status in ('failed', 'error'):
            self.store.update_instance(rec['id'], row['uuid'],
                                       migration_id=m['id'])
            self._retry(rec, row, 'evacuation %s (migration %d)'
                        % (status, m['id']))
        elif now - (row['requested_at'] or now) > \
                self.ev.evacuation_timeout:
            self._set(rec, row, 'failed', migration_id=m['id'],
                      message='evacuation still %s after %.0f s' % (
                          status, self.ev.evacuation_timeout))

    def _finish(self, rec, rows):
        failed = [r for r in rows if r['status'] == 'failed']
        state = 'failed' if failed else 'done'
        end = time.time()
        self.store.update_recovery(rec['id'], state=state, finished_at=end)
        self.metrics.recoveries.labels(state).inc()
        self.metrics.recovery_seconds.observe(end - rec['detected_at'])
        LOG.warning('Recovery %d of %s %s in %.1f s after detection: %d '
                    'evacuated, %d failed, %d skipped', rec['id'],
                    rec['host'], state, end - rec['detected_at'],
                    sum(r['status'] == 'done' for r in rows), len(failed),
                    sum(r['status'] == 'skipped' for r in rows))

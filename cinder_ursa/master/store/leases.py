"""Leases (the generation invariant), their history, and whole client
hosts: fencing for nova_ha.

Every lease change appends its events (``protocol/lease_history.py``)
to ``lease_events`` in its own transaction, so the history and the
volumes' lease columns are committed together or not at all.
"""

import json
import logging
import time

import sqlalchemy as sa

from cinder_ursa import exception
from cinder_ursa.master import models
from cinder_ursa.master.store.common import SHARED
from cinder_ursa.master.store.common import asked
from cinder_ursa.master.store.common import check_free_text
from cinder_ursa.master.store.common import check_text
from cinder_ursa.master.store.common import fence_reasons
from cinder_ursa.master.store.common import holder_host
from cinder_ursa.protocol import lease_history as events

LOG = logging.getLogger(__name__)

# [ursa_master] lease_history_per_volume's default.
LEASE_HISTORY_PER_VOLUME = 100
# [ursa_master] lease_handover_timeout's default (seconds).
LEASE_HANDOVER_TIMEOUT = 10.0


def _seconds(value):
    """A number of seconds as an option gives it: 10, not 10.0."""
    return '%g' % value


def _run_out(now, expires):
    """The reason of an ``expire`` event recorded at ``now``."""
    return 'not renewed: it had run out %.1f s before' % (now - expires)


class LeaseRecords:
    """Part of :class:`MetadataStore` (see the package)."""

    # The events kept per volume ([ursa_master] lease_history_per_volume;
    # MetadataStore sets it).
    lease_history_per_volume = LEASE_HISTORY_PER_VOLUME
    # How long a holder asked to hand its lease over has to release it
    # before the requester takes it by force ([ursa_master]
    # lease_handover_timeout; MetadataStore sets it).
    lease_handover_timeout = LEASE_HANDOVER_TIMEOUT

    def _lease_event(self, conn, volume_id, generation, holder, event, now,
                     reason=None):
        """Append an event to the volume's lease history, in the caller's
        transaction (that of the change it records), and trim the
        history to its newest ``lease_history_per_volume`` events."""
        e = models.lease_events
        conn.execute(e.insert().values(
            volume_id=volume_id, generation=generation, holder=holder,
            event=event, at=now, by=asked()[:255], reason=reason))
        # The id below which this volume's events go: indexed, and at most
        # a few rows to delete at a time.
        cutoff = conn.execute(sa.select(e.c.id).where(
            e.c.volume_id == volume_id).order_by(e.c.id.desc()).offset(
            self.lease_history_per_volume - 1).limit(1)).scalar()
        if cutoff is not None:
            conn.execute(e.delete().where(e.c.volume_id == volume_id,
                                          e.c.id < cutoff))

    def _end_leases(self, conn, vol, now, event, reason=None,
                    lapsed=False):
        """Record the end of every lease of ``vol`` (its exclusive
        holder's, or each shared writer's) of generation
        ``vol.lease_generation`` as ``event``, and drop the shared
        writers: a change that ends them all (revoke, fence, a new
        exclusive holder).  With ``lapsed``, a lease that had run out is
        recorded as ``expire`` instead (a new holder replaced it, it was
        not taken from anyone).  Returns how many events were
        recorded."""
        sl = models.shared_leases
        rows = conn.execute(sa.select(sl.c.holder, sl.c.expires).where(
            sl.c.volume_id == vol.id).order_by(sl.c.holder)).all()
        ending = [(r.holder, r.expires) for r in rows]
        if vol.lease_holder not in (None, SHARED):
            ending.append((vol.lease_holder, vol.lease_expires))
        if rows:
            conn.execute(sl.delete().where(sl.c.volume_id == vol.id))
        for holder, expires in ending:
            if lapsed and expires <= now:
                self._lease_event(conn, vol.id, vol.lease_generation,
                                  holder, events.EXPIRE, now,
                                  _run_out(now, expires))
            else:
                self._lease_event(conn, vol.id, vol.lease_generation,
                                  holder, event, now, reason)
        return len(ending)

    def _end_shares(self, conn, vol, ending, now, event, why):
        """End the shares of multiattach volume ``vol`` whose holders
        ``ending(holder)`` names (one host's: it is fenced, or detached)
        as ``event`` with reason ``why``, and re-admit every other live
        writer at the next generation: the generation goes + 1 all the
        same (the caller FENCEs the chunk servers with it, so the ended
        writers' writes are refused), but the others are not cut off.
        Each re-admitted writer's share of the old generation ends
        (``leave``) and one of the new starts (``share``), so the history
        still shows one generation per writer at a time; its renewal
        brings it the new generation (:meth:`renew_lease`).  Writers
        whose membership had run out are dropped (``expire``): they are
        not let back.  Returns (new generation, the holders ended, the
        holders re-admitted)."""
        t, sl = models.volumes, models.shared_leases
        old, gen = vol.lease_generation, vol.lease_generation + 1
        rows = conn.execute(sa.select(sl.c.holder, sl.c.expires).where(
            sl.c.volume_id == vol.id).order_by(sl.c.holder)).all()
        ended = [r for r in rows if ending(r.holder)]
        lapsed = [r for r in rows if not ending(r.holder) and
                  r.expires <= now]
        kept = [r for r in rows if not ending(r.holder) and r.expires > now]
        for r in ended + lapsed:
            conn.execute(sl.delete().where(sl.c.volume_id == vol.id,
                                           sl.c.holder == r.holder))
        for r in ended:
            self._lease_event(conn, vol.id, old, r.holder, event, now, why)
        for r in lapsed:
            self._lease_event(conn, vol.id, old, r.holder, events.EXPIRE,
                              now, _run_out(now, r.expires))
        for r in kept:
            self._lease_event(conn, vol.id, old, r.holder, events.LEAVE,
                              now, 're-admitted at generation %d: %s'
                              % (gen, why))
        for r in kept:
            self._lease_event(conn, vol.id, gen, r.holder, events.SHARE,
                              now, 're-admitted')
        conn.execute(t.update().where(t.c.id == vol.id).values(
            lease_holder=SHARED if kept else None, lease_generation=gen,
            lease_expires=max((r.expires for r in kept), default=0)))
        return gen, [r.holder for r in ended], [r.holder for r in kept]

    @staticmethod
    def _dropped_writers(conn, vol, host):
        """The writers on ``host`` whose membership of multiattach volume
        ``vol``'s generation was dropped as run out (``expire``) and that
        did not come back since.  Such a writer is not cut off: a client
        writes on under the generation it has while its renewals fail
        (only a ticket runs out; a client with the cluster key has
        none), and renewing that generation lets it back
        (:meth:`_join_shared`).  Ending the generation is what stops it.
        Read from the history (a history trimmed past the drop names
        nobody)."""
        e = models.lease_events
        last = {}
        for r in conn.execute(sa.select(e.c.holder, e.c.event).where(
                e.c.volume_id == vol.id,
                e.c.generation == vol.lease_generation).order_by(e.c.id)):
            if r.holder is not None and holder_host(r.holder) == host:
                last[r.holder] = r.event
        return sorted(h for h, ev in last.items() if ev == events.EXPIRE)

    def _join_shared(self, conn, vol, holder, ttl, now, renew=False):
        """Multiattach: writers share one generation while any of them
        holds the lease; the first after a gap (or a revoke) starts a new
        one.  The writers whose membership had run out are dropped
        (``expire``), the renewing writer's own aside: it keeps its
        generation, which nobody else can have replaced meanwhile."""
        t, sl = models.volumes, models.shared_leases
        rows = conn.execute(sa.select(sl.c.holder, sl.c.expires).where(
            sl.c.volume_id == vol.id).order_by(sl.c.holder)).all()
        lapsed = [r for r in rows if r.expires <= now and
                  not (renew and r.holder == holder)]
        for r in lapsed:
            conn.execute(sl.delete().where(sl.c.volume_id == vol.id,
                                           sl.c.holder == r.holder))
            self._lease_event(conn, vol.id, vol.lease_generation, r.holder,
                              events.EXPIRE, now, _run_out(now, r.expires))
        gone = {r.holder for r in lapsed}
        others = [r for r in rows if r.holder != holder and
                  r.holder not in gone]
        member = any(r.holder == holder and r.holder not in gone
                     for r in rows)
        gen = vol.lease_generation
        if not renew and not others and not (vol.lease_holder == SHARED and
                                             vol.lease_expires > now):
            gen += 1
            if vol.lease_holder not in (None, SHARED):
                # An exclusive holder's from before the volume became
                # multiattach: run out (the flag changes only while
                # nobody holds the volume).
                self._lease_event(
                    conn, vol.id, vol.lease_generation, vol.lease_holder,
                    events.EXPIRE, now, _run_out(now, vol.lease_expires))
        conn.execute(sl.delete().where(sl.c.volume_id == vol.id,
                                       sl.c.holder == holder))
        conn.execute(sl.insert().values(volume_id=vol.id, holder=holder,
                                        expires=now + ttl))
        conn.execute(t.update().where(t.c.id == vol.id).values(
            lease_holder=SHARED, lease_generation=gen,
            lease_expires=max(vol.lease_expires, now + ttl)))
        if not renew:
            self._lease_event(conn, vol.id, gen, holder, events.SHARE, now)
        elif not member:
            # Its membership had run out and was dropped (expire): it
            # writes again.
            self._lease_event(conn, vol.id, gen, holder, events.SHARE, now,
                              'renewed after its membership was dropped')
        return gen

    def acquire_lease(self, ref, holder, ttl, force=False, handover=False):
        """Take the write lease; a new holder gets generation + 1
        (multiattach volumes: writers share it).

        ``handover``: a live migration's destination asks for the lease
        its source holds (see :meth:`_ask_handover`): HandoverPending
        until the holder releases it, then the lease as usual; or, once
        the holder has let ``lease_handover_timeout`` pass since it was
        first asked, the lease taken by force (the caller fences the
        old generation as for any new one)."""
        t = models.volumes
        now = time.time()
        check_text('holder', holder)
        pending = None
        with self.begin() as conn:
            vol = self._find_volume(conn, ref)
            if vol.status != 'available':
                raise exception.Conflict(reason='volume %s is %s'
                                         % (vol.name, vol.status))
            self._check_host_not_fenced(conn, holder)
            if vol.multiattach:
                gen = self._join_shared(conn, vol, holder, ttl, now)
                LOG.info('Volume %s: %s shares lease generation %d, by '
                         '%s', vol.name, holder, gen, asked())
                return {'volume_id': vol.id, 'holder': holder,
                        'generation': gen, 'expires_at': now + ttl,
                        'ttl': ttl}
            held = vol.lease_holder and vol.lease_expires > now
            why = None
            if held and vol.lease_holder != holder and not force:
                if not (handover and self._may_hand_over(conn, vol, holder)):
                    raise exception.LeaseHeld(
                        volume=vol.name, holder=vol.lease_holder,
                        expires=time.strftime('%H:%M:%S', time.localtime(
                            vol.lease_expires)))
                pending, why = self._ask_handover(conn, vol, holder, now)
            if pending is None:
                # The lease it replaces ends here: run out, or taken
                # from a live holder (by force, or by the same holder
                # again).
                self._end_leases(
                    conn, vol, now, events.TAKEOVER,
                    why or ('taken again by its holder'
                            if vol.lease_holder == holder
                            else 'taken by force by %s' % holder),
                    lapsed=True)
                gen = vol.lease_generation + 1
                conn.execute(t.update().where(t.c.id == vol.id).values(
                    lease_holder=holder, lease_generation=gen,
                    lease_expires=now + ttl, handover_to=None,
                    handover_since=None))
                self._lease_event(conn, vol.id, gen, holder, events.ACQUIRE,
                                  now)
                self._swap_standby(conn, vol, holder)
        if pending is not None:
            # Raised once the request is committed: the holder's host
            # sees it in its attachment listing.
            raise pending
        LOG.info('Volume %s: lease generation %d to %s%s, by %s',
                 vol.name, gen, holder,
                 ' (forced: %s)' % why if why else
                 ' (forced)' if held and force else '', asked())
        return {'volume_id': vol.id, 'holder': holder, 'generation': gen,
                'expires_at': now + ttl, 'ttl': ttl}

    @staticmethod
    def _may_hand_over(conn, vol, holder):
        """Whether ``holder`` may ask the live holder of ``vol``'s
        exclusive lease to hand it over: a live migration, whose
        destination (``holder``'s host) has a standby attachment of the
        volume, and whose source (the holder's host) has one too."""
        a = models.attachments
        rows = {r.host: r for r in conn.execute(sa.select(
            a.c.host, a.c.standby, a.c.status).where(
            a.c.volume_id == vol.id))}
        mine = rows.get(holder_host(holder))
        return (mine is not None and mine.standby
                and mine.status != 'detaching'
                and holder_host(vol.lease_holder) in rows)

    def _ask_handover(self, conn, vol, holder, now):
        """Record (or find) ``holder``'s request for ``vol``'s lease,
        held live by another host: (HandoverPending to raise, None)
        while the holder has time left to release it, or (None, the
        reason of the takeover) once lease_handover_timeout has passed
        since it was first asked.  A request from another holder starts
        the wait again."""
        t = models.volumes
        timeout = self.lease_handover_timeout
        since = vol.handover_since
        if vol.handover_to != holder or since is None or since > now:
            since = now
            conn.execute(t.update().where(t.c.id == vol.id).values(
                handover_to=holder, handover_since=since))
            LOG.info('Volume %s: %s asks %s to hand the lease over (live '
                     'migration); taken by force in %s s if not released, '
                     'by %s', vol.name, holder, vol.lease_holder, timeout,
                     asked())
        waited = now - since
        if waited >= timeout:
            LOG.warning('Volume %s: %s did not hand the lease over to %s '
                        'within %s s: taken by force', vol.name,
                        vol.lease_holder, holder, timeout)
            return None, ('taken by %s: the holder did not hand over in '
                          '%s s' % (holder, _seconds(timeout)))
        e = exception.HandoverPending(
            volume=vol.name, holder=vol.lease_holder, requester=holder,
            since=waited, timeout=_seconds(timeout))
        e.retry_after = round(timeout - waited, 3)
        return e, None

    @staticmethod
    def _swap_standby(conn, vol, holder):
        """The exclusive lease went to ``holder``: if its host's
        attachment is a standby, it is the volume's attachment now, and
        the other hosts' are standbys (the source of the migration,
        until detached, may then ask for the lease back the same way)."""
        a = models.attachments
        host = holder_host(holder)
        mine = conn.execute(sa.select(a.c.standby).where(
            a.c.volume_id == vol.id, a.c.host == host)).first()
        if mine is None or not mine.standby:
            return
        conn.execute(a.update().where(a.c.volume_id == vol.id).values(
            standby=a.c.host != host))
        LOG.info('Volume %s: host %s took the lease: its attachment is no '
                 'standby any more, the other hosts\' are standbys now',
                 vol.name, host)

    def renew_lease(self, ref, holder, generation, ttl):
        """Extend ``holder``'s lease of ``generation``; Fenced if it is
        not the holder's any more.  A multiattach volume's writer that
        is still a live member at a newer generation (re-admitted when
        another writer's host was fenced or detached: see
        :meth:`_end_shares`) gets that generation back, and writes under
        it from then on: its writes of the old one are refused by the
        chunk servers like anyone's."""
        t = models.volumes
        now = time.time()
        check_text('holder', holder)
        with self.begin() as conn:
            vol = self._find_volume(conn, ref)
            if vol.multiattach and (
                    vol.lease_generation == generation or
                    generation < vol.lease_generation and
                    self._live_member(conn, vol, holder, now)):
                # (A fenced host's shares were ended with its fence:
                # it may not come back by renewing either.)
                self._check_host_not_fenced(conn, holder)
                gen = self._join_shared(conn, vol, holder, ttl, now,
                                        renew=True)
                if gen != generation:
                    LOG.info('Volume %s: %s renewed lease generation %d '
                             'and is re-admitted at generation %d, by %s',
                             vol.name, holder, generation, gen, asked())
                return {'volume_id': vol.id, 'holder': holder,
                        'generation': gen, 'expires_at': now + ttl,
                        'ttl': ttl,
                        'qos': json.loads(vol.qos) if vol.qos else {}}
            if vol.multiattach and generation < vol.lease_generation:
                raise exception.Fenced(
                    reason='lease generation %d of multiattach volume %s '
                           'was replaced by generation %d, of which %s is '
                           'no writer (its host was fenced or detached, '
                           'its membership ran out, or the lease was '
                           'revoked): open the volume again to write'
                           % (generation, vol.name, vol.lease_generation,
                              holder))
            if (vol.lease_holder != holder
                    or vol.lease_generation != generation):
                raise exception.Fenced(
                    reason='lease generation %d of volume %s was replaced '
                           'by generation %d (%s)' % (
                               generation, vol.name, vol.lease_generation,
                               vol.lease_holder))
            conn.execute(t.update().where(t.c.id == vol.id).values(
                lease_expires=now + ttl))
        # The holder learns changed QoS limits with each renewal.
        return {'volume_id': vol.id, 'holder': holder,
                'generation': generation, 'expires_at': now + ttl, 'ttl': ttl,
                'qos': json.loads(vol.qos) if vol.qos else {}}

    @staticmethod
    def _live_member(conn, vol, holder, now):
        """Whether ``holder`` shares ``vol``'s lease now (its membership
        has not run out)."""
        sl = models.shared_leases
        row = conn.execute(sa.select(sl.c.expires).where(
            sl.c.volume_id == vol.id, sl.c.holder == holder)).first()
        return row is not None and row.expires > now

    def release_lease(self, ref, holder, generation):
        """Give a lease back.  A multiattach volume's writer may give
        back an older generation than the volume's: it was re-admitted
        at the newer one (see :meth:`_end_shares`) and closes before a
        renewal told it; it leaves the newer one."""
        t, sl = models.volumes, models.shared_leases
        check_text('holder', holder)
        with self.begin() as conn:
            vol = self._find_volume(conn, ref)
            now = time.time()
            if vol.multiattach and generation < vol.lease_generation and \
                    self._live_member(conn, vol, holder, now):
                generation = vol.lease_generation
            if vol.multiattach and vol.lease_generation == generation:
                member = conn.execute(sl.delete().where(
                    sl.c.volume_id == vol.id,
                    sl.c.holder == holder)).rowcount
                left = conn.execute(sa.select(sl.c.holder).where(
                    sl.c.volume_id == vol.id,
                    sl.c.expires > now)).first()
                if left is None:
                    conn.execute(t.update().where(t.c.id == vol.id).values(
                        lease_holder=None, lease_expires=0))
                if member:
                    # (Not if its membership was dropped before: that
                    # ended it, as an expire.)
                    self._lease_event(conn, vol.id, generation, holder,
                                      events.LEAVE, now)
                LOG.info('Volume %s: %s left shared lease generation %d, '
                         'by %s', vol.name, holder, generation, asked())
                return
            if (vol.lease_holder == holder
                    and vol.lease_generation == generation):
                conn.execute(t.update().where(t.c.id == vol.id).values(
                    lease_holder=None, lease_expires=0))
                # Released while another host asked for it: a handover
                # (the requester's next acquire takes it).
                to = vol.handover_to if vol.handover_to and holder_host(
                    vol.handover_to) != holder_host(holder) else None
                self._lease_event(conn, vol.id, generation, holder,
                                  events.RELEASE, now,
                                  'handed over to %s' % to if to else None)
                LOG.info('Volume %s: lease generation %d released by its '
                         'holder %s%s, by %s', vol.name, generation, holder,
                         ' (handed over to %s)' % to if to else '',
                         asked())

    def revoke_lease(self, ref):
        """Fence the current holder: generation + 1, nobody holds it.
        Every writer of a multiattach volume is fenced with it: a
        volume-wide revoke (``POST /v1/volumes/{ref}/lease/revoke``,
        the Cinder driver's force detach from every host, an
        operator's).  One host's writers are ended by its detach or its
        fence instead, which re-admit the others."""
        t = models.volumes
        now = time.time()
        with self.begin() as conn:
            vol = self._find_volume(conn, ref)
            gen = vol.lease_generation + 1
            if not self._end_leases(conn, vol, now, events.REVOKE):
                # Nobody held it: the generation still goes up (what
                # the chunk servers are told), on the record.
                self._lease_event(conn, vol.id, vol.lease_generation, None,
                                  events.REVOKE, now)
            conn.execute(t.update().where(t.c.id == vol.id).values(
                lease_holder=None, lease_generation=gen, lease_expires=0))
        LOG.info('Volume %s: lease revoked, generation %d, by %s',
                 vol.name, gen, asked())
        return {'volume_id': vol.id, 'generation': gen}

    def lease_history(self, ref, limit=None):
        """The lease events of volume ``ref``, oldest first: the newest
        ``limit`` of them (None: every one kept)."""
        e = models.lease_events
        with self.engine.connect() as conn:
            vol = self._find_volume(conn, ref)
            q = sa.select(e).where(e.c.volume_id == vol.id).order_by(
                e.c.id.desc())
            if limit is not None:
                q = q.limit(limit)
            rows = conn.execute(q).all()
        return [{'id': r.id, 'volume_id': r.volume_id,
                 'generation': r.generation, 'holder': r.holder,
                 'event': r.event, 'at': r.at, 'by': r.by,
                 'reason': r.reason} for r in reversed(rows)]

    def _host_leases(self, conn, host):
        """The leases (and shared leases) held by ``host``'s clients."""
        t, sl = models.volumes, models.shared_leases
        rows = conn.execute(sa.select(
            t.c.id, t.c.name, t.c.lease_holder, t.c.lease_generation,
            t.c.lease_expires).where(t.c.lease_holder.is_not(None))).all()
        found = [{'volume_id': r.id, 'volume_name': r.name,
                  'holder': r.lease_holder, 'generation': r.lease_generation,
                  'expires_at': r.lease_expires}
                 for r in rows if holder_host(r.lease_holder) == host]
        shared = conn.execute(sa.select(
            sl.c.volume_id, sl.c.holder, sl.c.expires, t.c.name,
            t.c.lease_generation).join(t, t.c.id == sl.c.volume_id)).all()
        found += [{'volume_id': r.volume_id, 'volume_name': r.name,
                   'holder': r.holder, 'generation': r.lease_generation,
                   'expires_at': r.expires}
                  for r in shared if holder_host(r.holder) == host]
        return found

    def host_status(self, host):
        """What the cluster knows of a client host: its leases, live or
        not, and whether it is fenced."""
        f = models.fenced_hosts
        now = time.time()
        check_text('host', host)
        with self.engine.connect() as conn:
            leases = self._host_leases(conn, host)
            fenced = conn.execute(sa.select(f).where(f.c.host == host)).first()
            attached = conn.execute(sa.select(sa.func.count()).where(
                models.attachments.c.host == host)).scalar()
        for lease in leases:
            lease['live'] = lease['expires_at'] > now
        live = [x['expires_at'] for x in leases if x['live']]
        return {'host': host, 'leases': leases,
                'live_leases': len(live),
                # When the host last renewed nothing tells; a live lease
                # expires at most one ttl after its last renewal.
                'leases_expire_at': max(live) if live else None,
                'attachments': attached,
                'fenced': fenced is not None,
                'fenced_at': fenced.fenced_at if fenced else None,
                'fence_reason': fenced.reason if fenced else None}

    def fence_host(self, host, reason=None):
        """Fence every lease ``host``'s clients hold (generation + 1, so
        the chunk servers refuse their writes), drop its attachments, and
        refuse it new leases until :meth:`unfence_host`.  Idempotent.

        A multiattach volume's writers on other hosts are not fenced
        with it: they are re-admitted at the new generation (see
        :meth:`_end_shares`), and listed as ``readmitted``.  Every
        multiattach volume attached to the host is fenced, whether or
        not a share of the host's is left (see :meth:`_dropped_writers`).
        A host fenced before: see :meth:`_fenced_before`."""
        t, f = models.volumes, models.fenced_hosts
        check_text('host', host)
        check_free_text('reason', reason)
        fenced = {}
        now = time.time()
        why = 'host %s fenced%s' % (host, ': %s' % reason if reason else '')
        with self.begin() as conn:
            row = conn.execute(sa.select(f).where(f.c.host == host)).first()
            already = row is not None
            if not already:
                conn.execute(f.insert().values(host=host, reason=reason,
                                               fenced_at=now))
            else:
                merged = fence_reasons(row.reason, reason)
                if merged != row.reason:
                    conn.execute(f.update().where(f.c.host == host).values(
                        reason=merged))
            a = models.attachments
            touched = [r.volume_id for r in conn.execute(sa.select(
                a.c.volume_id).where(a.c.host == host))]
            leases = self._host_leases(conn, host)
            # A multiattach volume attached to the host is fenced even
            # if it holds no share of the host's: a writer there that
            # stopped renewing (what nova_ha fences) had its membership
            # dropped as run out, and may still write under the
            # generation (see _dropped_writers; the history, which
            # names it, may be trimmed).
            held = {x['volume_id'] for x in leases}
            for vid in touched:
                if vid in held:
                    continue
                vol = conn.execute(sa.select(t).where(t.c.id == vid)).first()
                if vol.multiattach and vol.lease_holder in (None, SHARED):
                    gone = self._dropped_writers(conn, vol, host)
                    leases.append({'volume_id': vid, 'volume_name': vol.name,
                                   'holder': gone[0] if gone else None})
            for lease in leases:
                vid = lease['volume_id']
                if vid in fenced:
                    continue
                vol = conn.execute(sa.select(t).where(t.c.id == vid)).first()
                readmitted = []
                if vol.multiattach and vol.lease_holder in (None, SHARED):
                    gen, _, readmitted = self._end_shares(
                        conn, vol, lambda h: holder_host(h) == host, now,
                        events.FENCE, why)
                else:
                    gen = vol.lease_generation + 1
                    self._end_leases(conn, vol, now, events.FENCE, why)
                    conn.execute(t.update().where(t.c.id == vid).values(
                        lease_holder=None, lease_generation=gen,
                        lease_expires=0))
                fenced[vid] = {'volume_id': vid,
                               'volume_name': lease['volume_name'],
                               'holder': lease['holder'],
                               'generation': gen,
                               'readmitted': readmitted}
            dropped = conn.execute(a.delete().where(
                a.c.host == host)).rowcount
            for vid in touched:
                self._settle_standby(conn, conn.execute(sa.select(t).where(
                    t.c.id == vid)).first())
            again = self._fenced_before(conn, host, fenced) if already \
                else []
        kept = sum(len(x['readmitted']) for x in fenced.values())
        LOG.warning('Host %s fenced%s: %d lease(s) revoked, %d '
                    'attachment(s) dropped%s, by %s', host,
                    ' (%s)' % reason if reason else '', len(fenced), dropped,
                    '; %d writer(s) of other hosts sharing multiattach '
                    'volumes with it re-admitted at the new generations'
                    % kept if kept else '', asked())
        return {'host': host, 'fenced': list(fenced.values()),
                'attachments_dropped': dropped, 'fenced_before': again}

    @staticmethod
    def _fenced_before(conn, host, fenced):
        """Fencing a host fenced before (a retry: the master that fenced
        it may have failed before it pushed the new generations to the
        chunk servers, FENCE, and a retry finds no lease of the host's
        left to fence): {'volume_id', 'generation'} of the volumes that
        fence ended leases of (its events' reasons name it, in the
        history), at their current generation, to push again.  The
        chunk servers that have it already take it as a no-op.  Without
        this a host fenced on a master that failed right after could
        write on, after a retry said it was fenced, wherever no other
        writer's request made the chunk servers confirm the new
        generation: a multiattach volume's re-admitted writers take no
        new lease that would push it."""
        t, e = models.volumes, models.lease_events
        why = 'host %s fenced' % host
        vids = {r.volume_id for r in conn.execute(sa.select(
            e.c.volume_id, e.c.reason).where(
            e.c.event.in_((events.FENCE, events.LEAVE)),
            e.c.reason.contains(why, autoescape=True)))
            if r.reason.startswith(why) or
            r.reason.startswith('re-admitted at generation') and
            (': ' + why) in r.reason}
        return [{'volume_id': r.id, 'generation': r.lease_generation}
                for r in conn.execute(sa.select(
                    t.c.id, t.c.lease_generation).where(
                    t.c.id.in_(sorted(vids - set(fenced)))).order_by(t.c.id))]

    def unfence_host(self, host):
        f = models.fenced_hosts
        check_text('host', host)
        with self.begin() as conn:
            gone = conn.execute(f.delete().where(f.c.host == host)).rowcount
        if gone:
            LOG.info('Host %s unfenced: it may take leases again, by %s',
                     host, asked())
        return bool(gone)

    def list_fenced_hosts(self):
        f = models.fenced_hosts
        with self.engine.connect() as conn:
            return [{'host': r.host, 'reason': r.reason,
                     'fenced_at': r.fenced_at}
                    for r in conn.execute(sa.select(f).order_by(f.c.host))]

    def _check_host_not_fenced(self, conn, holder):
        f = models.fenced_hosts
        host = holder_host(holder)
        row = conn.execute(sa.select(f).where(f.c.host == host)).first()
        if row is not None:
            raise exception.Fenced(
                reason='host %s was fenced at %s%s; it may take no lease '
                       'until an operator unfences it (ursa host unfence %s)'
                       % (host, time.strftime('%Y-%m-%d %H:%M:%S',
                                              time.localtime(row.fenced_at)),
                          ' (%s)' % row.reason if row.reason else '', host))

"""Leader election among several ursa-master processes over one database.

Two parts, each doing what it is sure to do on every backend:

* **Liveness, through tooz group membership.**  Every master joins the
  tooz group ``ursa-masters`` under its URL and heartbeats every
  ``renew_deadline / 4`` seconds.  A member that stops heartbeating drops
  out of the group after the backend's member timeout, the *lease*
  (``leader_lease``, which ursa-master adds to the coordination URL as
  the backend's member timeout option: see
  :data:`cinder_ursa.cmd.master.LEASE_OPTIONS`).  Group membership with member
  expiry works on tooz's file, Redis, etcd3, ZooKeeper and memcached
  drivers; ``watch_elected_as_leader`` works on Redis, ZooKeeper and
  memcached only, and a tooz lock on the file driver is held by a stopped
  (SIGSTOP) process for ever, so neither serves as the election here.
* **Who leads, through the term row in the database** (see
  :mod:`cinder_ursa.master.store.term`).  A master that finds no leader,
  or a leader that has left the group, or its own URL from before a
  restart, takes ``term + 1`` with a compare and swap: of several
  standbys one wins.  Every write transaction of the leader checks its
  term, so a deposed leader changes nothing.

A leader that is stopped (SIGTERM) hands over at once
(:meth:`Elector.stop`): it steps down, gives its term up in the database
(the row then names no leader) and leaves the group; a standby takes
``term + 1`` at its next round, within ``renew_deadline / 4`` seconds,
instead of after the lease.

A leader stops acting by itself (:meth:`Elector.is_leader` turns false:
background loops stop, writes are refused) when it has not renewed for
``renew_deadline`` seconds, which is shorter than the lease: it has
stepped down before a standby may see it gone.  A leader that was only
paused (SIGSTOP) may not get to look at the clock before a write: the
term check refuses that write.  On its next renewal it reads the newer
term and steps down.
"""

import asyncio
import concurrent.futures
import functools
import logging
import time

from cinder_ursa import exception

LOG = logging.getLogger(__name__)

GROUP = b'ursa-masters'


class Elector:
    """One master's part in the election.

    ``store``: the :class:`MetadataStore`; ``db``: a coroutine function
    running a store method on the database thread; ``url``: this master's
    URL (its tooz member id and what the term row names);
    ``coordination_url``: the tooz backend; ``renew_deadline``: seconds
    after its last renewal a leader steps down; ``on_elected(term,
    previous)`` and ``on_deposed()``: called in the loop.
    """

    def __init__(self, store, db, url, coordination_url, renew_deadline,
                 on_elected=None, on_deposed=None):
        self.store = store
        self.db = db
        self.url = url
        self.coordination_url = coordination_url
        self.renew_deadline = renew_deadline
        self.on_elected = on_elected or (lambda term, previous: None)
        self.on_deposed = on_deposed or (lambda: None)
        self.term = None            # the term held, when leading
        self.renewed = 0.0          # monotonic time of the last renewal
        self.leader = None          # the leader's URL, as last read
        self.standbys = []          # the masters in the group but him
        self.store_term = 0         # the newest term, as last read
        self.above = 0              # a term chunk servers have seen
        self._coord = None
        self._task = None
        # Imported here, not with the module: ursa-master keeps eventlet
        # from being imported first (see cmd/master.py).  Not in the
        # election's thread either: where eventlet can be imported (a
        # test process), futurist imports it, and a pool thread that
        # imported eventlet can no longer be joined.
        from tooz import coordination
        self._coordination = coordination
        # tooz calls block (file locks, network): one thread of their own.
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix='ursa-election')

    # --- state -----------------------------------------------------------

    def is_leader(self):
        return self.term is not None and \
            time.monotonic() - self.renewed < self.renew_deadline

    def guard(self):
        """The store's write guard: the term held, or NotLeader naming
        the leader."""
        term = self.term
        if term is None or not self.is_leader():
            raise self.not_leader()
        return term

    def not_leader(self):
        if self.leader and self.leader != self.url:
            e = exception.NotLeader(reason='the leader is %s' % self.leader)
        else:
            e = exception.NotLeader(reason='no master leads at the moment '
                                    '(an election is under way); retry')
        e.leader = self.leader if self.leader != self.url else None
        return e

    def status(self):
        """What ``GET /v1/cluster`` shows of the masters."""
        return {'leader': self.leader, 'term': self.store_term,
                'standbys': list(self.standbys)}

    # --- the loop --------------------------------------------------------

    async def _tooz(self, fn, *args):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, functools.partial(fn, *args))

    def _connect(self):
        coordination = self._coordination
        coord = coordination.get_coordinator(self.coordination_url,
                                             self.url.encode())
        coord.start(start_heart=False)
        try:
            coord.create_group(GROUP).get()
        except coordination.GroupAlreadyExist:
            pass
        try:
            coord.join_group(GROUP, capabilities=b'').get()
        except coordination.MemberAlreadyExist:
            # Left by this URL's previous process (it crashed).
            coord.leave_group(GROUP).get()
            coord.join_group(GROUP, capabilities=b'').get()
        return coord

    def start(self):
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self):
        """Leave the election.  A leader hands over at once: it steps down
        (its loops stop, its writes are refused), gives its term up in the
        database and leaves the group, so a standby takes over at its next
        round (``renew_deadline / 4``) rather than after the lease."""
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        if self.term is not None:
            term, self.term = self.term, None
            LOG.info('This master (%s) stops: it hands the leadership of '
                     'term %d over', self.url, term)
            self.on_deposed()
            try:
                await self.db(self.store.resign_term, term, self.url)
            except Exception as e:  # noqa: BLE001 - the lease then expires
                LOG.warning('Giving term %d up failed: %s', term, e)
        if self._coord is not None:
            coord, self._coord = self._coord, None
            try:
                await self._tooz(self._leave, coord)
            except Exception:  # noqa: BLE001 - leaving is a courtesy
                LOG.debug('Leaving the tooz group failed', exc_info=True)
        self._pool.shutdown(wait=False)

    @staticmethod
    def _leave(coord):
        try:
            coord.leave_group(GROUP).get()
        finally:
            coord.stop()

    async def _run(self):
        interval = self.renew_deadline / 4.0
        while True:
            try:
                # A backend or database call that hangs must not keep a
                # leader acting past its deadline.
                await asyncio.wait_for(self.round(), self.renew_deadline)
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                LOG.warning('Leader election round took more than %.1f s',
                            self.renew_deadline)
            except Exception as e:  # noqa: BLE001 - keep trying
                LOG.warning('Leader election round failed: %s', e)
                if self._coord is not None:
                    coord, self._coord = self._coord, None
                    self._pool.submit(coord.stop)
            if self.term is not None and not self.is_leader():
                self._step_down('it could not renew its leadership for %.1f '
                                's' % self.renew_deadline)
            await asyncio.sleep(interval)

    async def round(self):
        """Renew (leader) or look for a leader to replace (standby)."""
        started = time.monotonic()
        if self._coord is None:
            self._coord = await self._tooz(self._connect)
        await self._tooz(self._coord.heartbeat)
        rec = await self.db(self.store.leader_record)
        self.leader, self.store_term = rec['leader'], rec['term']
        members = {m.decode() if isinstance(m, bytes) else m
                   for m in await self._tooz(
                       lambda: self._coord.get_members(GROUP).get())}
        self.standbys = sorted(members - {rec['leader']})
        if self.term is not None:
            if rec['term'] != self.term or rec['leader'] != self.url:
                self._step_down('master %s took term %d' % (
                    rec['leader'], rec['term']))
            else:
                # The heartbeat was sent after ``started``: the member
                # expires no sooner than lease seconds from then.
                self.renewed = started
                return
        if rec['leader'] is None or rec['leader'] == self.url or \
                rec['leader'] not in members:
            term = await self.db(self.store.take_term, rec['term'], self.url,
                                 self.above)
            if term is None:
                return          # another standby won
            self.term, self.renewed = term, started
            self.leader, self.store_term = self.url, term
            self.standbys = sorted(members - {self.url})
            previous = rec['leader']
            LOG.info('This master (%s) is the leader, term %d (the previous '
                     'leader was %s)', self.url, term, previous or 'none')
            self.on_elected(term, previous)

    def step_down(self, why, newer=None):
        """Stop leading now (a chunk server refused this master's term;
        ``newer``: the term it has seen, if it said).  The next round reads
        who leads; a master that takes a term then takes one above
        ``newer`` (chunk servers may be ahead of the database when it was
        restored from an older backup)."""
        if newer is not None:
            self.above = max(self.above, newer)
        if self.term is not None:
            self._step_down(why)

    def _step_down(self, why):
        LOG.warning('This master (%s) is no longer the leader of term %s: '
                    '%s; it stops acting and answers as a standby',
                    self.url, self.term, why)
        self.term = None
        self.on_deposed()

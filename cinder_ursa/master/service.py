"""What the master does across its database and the chunk servers.

The REST layer (:mod:`.api`) parses requests and calls the store for what
only reads or writes records; what must also reach the chunk servers lives
here, in the order that keeps the cluster consistent:

* a new lease generation is committed, then pushed (FENCE) to every chunk
  server that is up;
* a snapshot is begun in the database, adopted by every chunk server (so
  every primary refuses writes made before it), then finished;
* a revert, a volume deletion and the trash reaper broadcast to the chunk
  servers between their database steps;
* the watcher marks silent chunk servers down and forgets snapshots whose
  master died half-way;
* the repairer runs the repair planner (:mod:`.repair`) every
  ``repair_interval``, when a copy ends and when a server registers, and
  hands each copy it plans to the chunk's source server (REBUILD), a few
  per server at once; a move (drain, rebalance) then retires the replica
  it replaced (:meth:`MasterService.retire`).

With leader election (:mod:`.election`, the default of ursa-master),
the watcher and the repairer run on the leader only: they start when this
master is elected (the watcher then judges only silence observed from
then on, and the repairer first waits ``server_timeout`` for the chunk
servers to report to it) and stop when it steps down; the store then
refuses writes (its guard).

Database calls run on one worker thread (:meth:`MasterService.db`), so
the event loop never blocks on the database.
"""

import asyncio
import collections
import concurrent.futures
import contextvars
import functools
import logging
import time

from cinder_ursa import exception
from cinder_ursa.master import chunkservers
from cinder_ursa.master import election
from cinder_ursa.master import hostbeats
from cinder_ursa.master import repair
from cinder_ursa.master import slowdisk
from cinder_ursa.master.store import common as store_common
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import control

LOG = logging.getLogger(__name__)

# A snapshot still 'creating' after this long lost its master mid-way.
UNFINISHED_AFTER = 60.0
UNFINISHED_SWEEP = 10.0
# A chunk copy longer than this is given up (64 MiB takes about a second).
RESYNC_CONCURRENCY = 8      # resyncs a master has running at once
HOLD_BACK_MAX = 600.0       # s a chunk whose source is bad waits at most
MAX_DROPS_KEPT = 65536      # drops remembered per server between beats
DROP_SLICE = 10000          # chunks a down server leaves per database call
REBUILD_TIMEOUT = 600.0
# Seconds a server a copy failed to is not chosen again (at least).
AVOID_AFTER_FAILURE = 10.0
# The recovery rate is the bytes copied over this many seconds.
RATE_WINDOW = 60.0
# Seconds a replica drop waits at most for the dropped server to learn
# it (see MasterService.tell_dropped).
TELL_DROPPED_WAIT = 1.0


def job_dict(job):
    """A planned job as JSON: what it does to which chunk."""
    return {'volume_id': job.volume_id, 'index': job.index,
            'source': job.source, 'target': job.target,
            'retire': job.retire, 'reason': repair.REASONS[job.priority]}
# A copy that ends plans the next round at once (its slots are free), but
# rounds start at least this many seconds apart.
REPLAN_GAP = 1.0


class MasterService:
    """The cluster protocols over a :class:`MetadataStore` ``store``."""

    def __init__(self, store, key, server_timeout=15.0, replica_grace=600.0,
                 repair_interval=10.0, repair_per_server=2,
                 rebalance_moves=2, rebalance_threshold=10,
                 coordination_url=None, renew_deadline=10.0,
                 server_startup_timeout=60.0, slow_disk_period=60.0,
                 slow_disk_factor=4.0, slow_disk_min_latency=0.020,
                 slow_disk_min_samples=20):
        self.store = store
        # Leader election: None runs this master alone, as the leader,
        # without a term check (tests, tools).
        self.coordination_url = coordination_url
        self.renew_deadline = renew_deadline
        self.elector = None
        self.server_timeout = server_timeout
        # After a cold start (see _take_over), a server this master has
        # not heard yet is judged only once this is over (monotonic).
        self.server_startup_timeout = max(server_startup_timeout,
                                          server_timeout)
        self._booting_until = None
        self._heard = set()     # servers heard since this master leads
        self.replica_grace = replica_grace
        self.repair_interval = repair_interval
        self.repair_per_server = repair_per_server
        self.rebalance_moves = rebalance_moves
        self.rebalance_threshold = rebalance_threshold
        self.chunkservers = chunkservers.ChunkServers(
            key, guard=self._command_guard, deposed=self._told_deposed)
        self._db = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix='ursa-db')
        # The election's reads and term changes, on a thread of their
        # own: a backlog of requests on the database thread (thirty
        # chunk servers registering their millions of replicas after a
        # restart) must not cost the leader its term, only a database
        # that does not answer.
        self._election_db = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix='ursa-election')
        self._monitor = None
        self._announcing = None
        # Client hosts' storage heartbeats (nova_ha's agents), judged
        # from when this master leads; and the fenced hosts they are
        # told of, read at most once a second for all of them.
        self.host_beats = hostbeats.HostBeats()
        self._fenced_read = None    # (monotonic, {host: reason}) or None
        self._fenced_task = None
        # Set once the unfinished snapshots of the master that ran before
        # are forgotten (see _watch_servers).
        self._swept = None
        self._repairer = None
        self._jobs = {}             # (volume, index) -> running Job
        self._avoid = {}            # target -> until when (a copy failed)
        self._orphans = {}          # (volume, index) -> since when joining
        # (volume, index) -> server: a retire left it a joining copy (it
        # could not be told, or the chunk changed under the retire); each
        # repair round tries to finish it (see retire).
        self._leaving = {}
                                    # copies are seen with no copy running
        self._summary = {}
        self._round_lock = None     # made in the loop that runs rounds
        self._progress = {}
        self._replan = asyncio.Event()
        self.copied_bytes = 0
        # Repair jobs ended, by result (done, failed).
        self.repair_results = collections.Counter()
        # The master's metrics (cinder_ursa.master.metrics), if exported:
        # it times the database calls, and reads its summary while this
        # master leads.
        self.metrics = None
        self._failed_at = {}    # server id -> when it failed a write
        self._held_back = {}    # chunk -> (until, delay): a bad source
        self._live = set()      # see live_servers
        self._lost_cache = set()
        self._drops = {}        # server id -> {(volume, index): epoch}
        self._telling = set()   # tasks of tell_dropped still running
        self._deaf_since = None     # since when no chunk server is heard
        self._resyncs_pending = 0   # chunks marked, as last read
        self._resync_slots = None   # made in the loop: RESYNC_CONCURRENCY
        self._resyncing = set()
        self._copies = collections.deque()     # (monotonic time, bytes)
        self.retired = 0
        # Allocated bytes per chunk server and volume, from heartbeats.
        self.usage = {}
        self._usage_totals = {}     # server id -> sum of its usage
        # Servers marked down being dropped from their replica sets:
        # {id: the chunk key to go on after}, and their counts so far.
        self._dropping = {}
        self._dropped = {}
        self._drop_task = None
        # Scrub progress per chunk server, from heartbeats.
        self.scrubs = {}
        # Disk latency per chunk server, from heartbeats, and the slow
        # servers judged from it (see slowdisk.py).
        self.slow = slowdisk.SlowDiskJudge(
            slow_disk_period, slow_disk_factor, slow_disk_min_latency,
            slow_disk_min_samples, stale_after=server_timeout)

    async def db(self, fn, *args, **kwargs):
        """Run ``fn`` (a store method) on the database thread, in the
        caller's context (the store's log lines name who asked: see
        store.common.REQUESTER)."""
        loop = asyncio.get_running_loop()
        call = functools.partial(fn, *args, **kwargs)
        if self.metrics is not None:
            call = self.metrics.timed(fn, call)
        return await loop.run_in_executor(
            self._db, contextvars.copy_context().run, call)

    async def _election_call(self, fn, *args, **kwargs):
        """Run ``fn`` (a store method of the election) on the election's
        database thread."""
        return await asyncio.get_running_loop().run_in_executor(
            self._election_db, functools.partial(fn, *args, **kwargs))

    def start(self):
        if self.coordination_url is None:
            self._start_loops()
        else:
            # No write until elected (start_election, once the URL is
            # known).
            self.store.guard = self._guard

    def _start_loops(self):
        loop = asyncio.get_running_loop()
        self._swept = asyncio.Event()
        self._monitor = loop.create_task(self._watch_servers())
        self._repairer = loop.create_task(self._repair_loop())
        if self.metrics is not None:
            self.metrics.start()

    def _stop_loops(self):
        for task in (self._monitor, self._repairer):
            if task:
                task.cancel()
        if self._swept is not None:
            self._swept.set()     # waiters go on, and meet the term check
        self._monitor = self._repairer = None
        if self.metrics is not None:
            self.metrics.stop()

    def stop(self):
        self._stop_loops()
        self.chunkservers.close()
        self._db.shutdown(wait=True)
        self._election_db.shutdown(wait=True)

    # --- leader election -------------------------------------------------

    async def start_election(self, url):
        """Take part in leader election as ``url`` (this master's API);
        return after the first round (a lone master is then leader)."""
        self.elector = election.Elector(
            self.store, self._election_call, url, self.coordination_url,
            self.renew_deadline, on_elected=self._elected,
            on_deposed=self._deposed)
        try:
            await self.elector.round()
        except Exception as e:  # noqa: BLE001 - the loop tries again
            LOG.warning('First leader election round failed: %s', e)
        self.elector.start()

    async def stop_election(self):
        if self.elector is not None:
            await self.elector.stop()

    def _elected(self, term, previous):
        self.chunkservers.new_term(term)
        self.host_beats.reset()
        self._fenced_read = None
        self._start_loops()
        # Every chunk server learns the term now, not at its next
        # heartbeat: from then on it refuses a deposed leader still at
        # work (paused past its lease, then woken).
        self._announcing = asyncio.get_running_loop().create_task(
            self._announce_term())

    async def _announce_term(self):
        try:
            failed = await self._broadcast(
                lambda rid: control.encode_term(rid, self.chunkservers.term))
        except exception.NotLeader:
            return
        except exception.UrsaError as e:
            LOG.warning('Announcing the term to the chunk servers failed: '
                        '%s; they learn it from their heartbeats', e)
            return
        if failed:
            LOG.info('Chunk server(s) %s did not hear of the new term; they '
                     'learn it from their next heartbeat',
                     ', '.join(map(str, failed)))

    def _deposed(self):
        self._stop_loops()
        self.chunkservers.new_term(None)

    def _told_deposed(self, error, newer=None):
        """A chunk server refused this master's term (it has seen
        ``newer``, if it said): a newer leader exists, or the database
        was restored from an older backup; stop acting now rather than at
        the next election round."""
        if self.elector is not None:
            self.elector.step_down('a chunk server refused it: %s' % error,
                                   newer)

    def _command_guard(self):
        if not self.is_leader():
            raise self.not_leader()

    def term(self):
        """The term this master leads with (None: no election, or not
        the leader)."""
        return self.elector.term if self.elector is not None else None

    def _guard(self):
        if self.elector is None:
            raise exception.NotLeader(reason='this master is starting')
        return self.elector.guard()

    def is_leader(self):
        return self.coordination_url is None or (
            self.elector is not None and self.elector.is_leader())

    def not_leader(self):
        """NotLeader naming the leader (an ``leader`` attribute)."""
        if self.elector is None:
            return exception.NotLeader(reason='this master is starting')
        return self.elector.not_leader()

    def masters(self):
        """The leader, the term and the standbys (GET /v1/cluster)."""
        if self.elector is None:
            return {'leader': None, 'term': None, 'standbys': []}
        return self.elector.status()

    # --- usage (from heartbeats) ---------------------------------------

    def note_usage(self, server_id, volumes):
        """``volumes``: {volume id: bytes} a chunk server reported."""
        self.usage[server_id] = volumes
        self._usage_totals[server_id] = sum(volumes.values())

    def note_scrub(self, server_id, report):
        """A chunk server's scrub progress (None: it sent none)."""
        if report is None:
            self.scrubs.pop(server_id, None)
        else:
            self.scrubs[server_id] = report

    def scrub_status(self):
        """The scrubs of the chunk servers that reported one, and their
        totals: bytes checked of this pass, the pass with the most time
        left, bad blocks found, repaired and left, the newest error."""
        servers = {sid: r for sid, r in sorted(self.scrubs.items())}
        total = {k: sum(r.get(k) or 0 for r in servers.values())
                 for k in ('bytes_done', 'bytes_total', 'rate_bytes_per_s',
                           'bad_blocks_found', 'bad_blocks_repaired',
                           'bad_blocks_unrepaired')}
        light = [r.get('light') or {} for r in servers.values()]
        total['light_blocks_made_identical'] = sum(
            lr.get('blocks_made_identical') or 0 for lr in light)
        etas = [r['eta_s'] for r in servers.values()
                if r.get('eta_s') is not None]
        total['eta_s'] = max(etas) if etas else None
        starts = [r['pass_started'] for r in servers.values()
                  if r.get('pass_started') is not None]
        total['oldest_pass_started'] = min(starts) if starts else None
        errors = ['server %d: %s' % (sid, r['last_error'])
                  for sid, r in servers.items() if r.get('last_error')]
        total['errors'] = errors
        total['servers'] = {str(sid): r for sid, r in servers.items()}
        return total

    def allocated_total(self):
        # Summed as reported: a status read is not a walk of every
        # volume of every server.
        return sum(self._usage_totals.values())

    def allocated(self, vol):
        """``vol`` (a dict) with the bytes it uses (with its snapshots): in
        total on every replica, and once (total divided by the replication
        factor)."""
        total = sum(u.get(vol['id'], 0) for u in self.usage.values())
        vol['allocated_bytes_total'] = total
        vol['allocated_bytes'] = total // max(vol['replicas'], 1)
        return vol

    # --- chunk servers -------------------------------------------------

    async def up_servers(self):
        return [s for s in await self.db(self.store.list_servers)
                if s['state'] == 'up']

    async def _broadcast(self, make_frame, timeout=5.0):
        return await self.chunkservers.broadcast(
            await self.up_servers(), make_frame, timeout)

    async def _watch_servers(self):
        interval = max(self.server_timeout / 3.0, 0.2)
        next_sweep = 0.0
        try:
            await self._take_over()
        finally:
            self._swept.set()
        # The resyncs the previous master had not done (the chunks stay
        # marked in the database until they are).
        self.resync_soon()
        while True:
            await asyncio.sleep(interval)
            try:
                if await self._deaf():
                    continue
                down = await self.db(
                    self.store.mark_down, self.server_timeout, None,
                    self._judged(), False)
                self._live -= set(down)
                self.drop_soon(down)
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + UNFINISHED_SWEEP
                    for vid in await self.db(
                            self.store.forget_unfinished_snapshots,
                            UNFINISHED_AFTER):
                        await self.gc(vid)
            except Exception:  # noqa: BLE001 - keep watching
                LOG.exception('Checking chunk server heartbeats failed')

    def drop_soon(self, servers):
        """Drop ``servers`` (marked down) from their replica sets, a
        slice of DROP_SLICE chunks per database call, so the requests
        that arrive meanwhile are served between two slices."""
        for sid in servers:
            self._dropping.setdefault(sid, None)
        if servers and (self._drop_task is None or self._drop_task.done()):
            self._drop_task = asyncio.get_running_loop().create_task(
                self._drop_slices())

    async def _drop_slices(self):
        while self._dropping and self.is_leader():
            for sid, after in list(self._dropping.items()):
                primaries = []
                try:
                    n, after = await self.db(self.store.drop_slice, sid,
                                             after, DROP_SLICE, primaries)
                except Exception as e:  # noqa: BLE001 - next round
                    LOG.warning('Dropping chunk server %d from its replica '
                                'sets failed: %s; retried', sid, e)
                    await asyncio.sleep(1.0)
                    continue
                if primaries:
                    self.resync_soon()
                self._dropped[sid] = self._dropped.get(sid, 0) + n
                if after is None:
                    del self._dropping[sid]
                    LOG.warning('Chunk server %d dropped from %d replica '
                                'set(s)', sid, self._dropped.pop(sid))
                else:
                    self._dropping[sid] = after
        self._dropping.clear()

    def _judged(self):
        """The servers whose silence counts (None: every one): after a
        cold start, until server_startup_timeout is over, only those
        heard since."""
        if self._booting_until is None:
            return None
        if time.monotonic() >= self._booting_until:
            self._booting_until = None
            return None
        return set(self._heard)

    async def _deaf(self):
        """Whether this master hears no chunk server while several are
        up: then it is the one cut off (its network, its host), not every
        server dead at once, and marking them down one after the other as
        their silences pass server_timeout would strip every chunk to one
        replica (never the last) while the servers, which still reach
        each other and the clients, take writes on all of them.

        Deaf: no heartbeat from any server for two thirds of
        server_timeout (each beats every third of it), which is already
        so when the first of them was cut off for server_timeout.  Nobody
        is marked down then; once one is heard again, every silence is
        judged from then on (as after an election).  The servers, which
        cannot reach this master either, serve no read past their lease
        meanwhile (chunkserver.controlplane).  Had they all died, they
        stay listed up until one returns: no chunk had a replica left to
        write anyway."""
        up, heard = await self.db(self.store.heard_from,
                                  self.server_timeout * 2.0 / 3.0)
        if up < 2 or heard:
            if self._deaf_since is not None:
                LOG.warning('Chunk servers heard again after %.0f s of '
                            'silence from all of them; their heartbeats are '
                            'judged from now on',
                            time.monotonic() - self._deaf_since)
                self._deaf_since = None
                await self.db(self.store.reset_heartbeats)
            return False
        if self._deaf_since is None:
            self._deaf_since = time.monotonic()
            LOG.error('No chunk server (of %d up) sent a heartbeat for %.1f '
                      's: this master is probably cut off from them; none '
                      'is marked down until one is heard again', up,
                      self.server_timeout * 2.0 / 3.0)
        return True

    async def _take_over(self):
        """Settle what the master that ran before left (the first thing
        a master does once it leads, snapshot creations waiting)."""
        # Judge only silence observed from now on: the chunk servers sent
        # their heartbeats to the previous leader, or to nobody during the
        # election.  When none had beaten for server_timeout, the whole
        # cluster is starting (a cold start): the servers boot after this
        # master, one by one, and the last must not be stripped of every
        # replica it holds for booting slowly, so those not heard yet get
        # server_startup_timeout.  (After a restart or a failover the
        # others beat within a heartbeat, and one that died meanwhile is
        # judged by server_timeout as usual: snapshots wait for it.)
        self._heard = set()
        self._booting_until = None
        try:
            newest = await self.db(self.store.reset_heartbeats)
        except Exception as e:  # noqa: BLE001 - the loop goes on
            LOG.warning('Resetting heartbeats failed: %s', e)
        else:
            if newest is not None and \
                    time.time() - newest > self.server_timeout:
                self._booting_until = (time.monotonic()
                                       + self.server_startup_timeout)
                LOG.info('No chunk server sent a heartbeat for %.0f s: a '
                         'cold start; each is given %.0f s to report',
                         time.time() - newest, self.server_startup_timeout)
        # Servers marked down whose drop from their replica sets, a slice
        # at a time, the previous master had not finished.
        try:
            self.drop_soon(await self.db(self.store.servers_to_drop))
        except Exception as e:  # noqa: BLE001 - the next mark-down tells
            LOG.warning('Listing the servers left to drop failed: %s', e)
        # The drops the previous master had still to tell with their
        # servers' next heartbeats died with it: every server dropped
        # from a chunk is told again (one that knows already ignores it).
        try:
            for sid, vid, idx, epoch in await self.db(
                    self.store.lost_copies):
                self.note_drop(sid, vid, idx, epoch)
        except Exception as e:  # noqa: BLE001 - registrations tell too
            LOG.warning('Listing the dropped copies failed: %s', e)
        # Every snapshot left 'creating' was begun by the master that ran
        # before (this one takes no creation until this is done); it died
        # or was deposed mid-way, so its finish can no longer commit.
        # Forgotten now, not after UNFINISHED_AFTER: a client retrying the
        # creation would find the name taken.
        try:
            for vid in await self.db(self.store.forget_unfinished_snapshots):
                await self.gc(vid)
        except Exception as e:  # noqa: BLE001 - the sweep retries
            LOG.warning('Forgetting the previous master\'s unfinished '
                        'snapshots failed: %s; retried later', e)

    # --- repair ----------------------------------------------------------

    def registered(self, server_id):
        """Chunk server ``server_id`` (re)registered: a copy that failed
        to it before (it was dead) may succeed now: plan at once."""
        self._avoid.pop(server_id, None)
        self._replan.set()

    def repairs_running(self):
        """The copies and moves this master runs now."""
        return len(self._jobs)

    def repair_status(self):
        """The planner's last counts, the copies running, the bytes
        copied since this master started and the recovery progress: the
        bytes left to copy (an estimate, from each volume's bytes per
        replica), the bytes copied per second over the last minute, the
        seconds left at that rate (None: no copy finished lately) and the
        replica moves left (drain, rebalance, a replica too many)."""
        now = time.monotonic()
        while self._copies and self._copies[0][0] < now - RATE_WINDOW:
            self._copies.popleft()
        rate = sum(n for _, n in self._copies) / RATE_WINDOW
        left = self._progress.get('bytes_left_estimate', 0)
        moves = self._progress.get('moves_pending', 0) + sum(
            job.priority in repair.MOVES for job in self._jobs.values())
        return dict(self._summary, running=len(self._jobs),
                    copied_bytes=self.copied_bytes,
                    resyncs_pending=self._resyncs_pending,
                    retired_replicas=self.retired,
                    bytes_left_estimate=left,
                    rate_bytes_per_s=int(rate),
                    eta_s=(0 if not left else
                           int(left / rate) if rate else None),
                    moves_pending=moves)

    def _note_progress(self, chunks, goals, servers, held):
        """What is left to copy and move (see :meth:`repair_status`);
        ``held``: {volume id: replicas held}."""
        per_replica = collections.Counter()
        for u in self.usage.values():
            per_replica.update(u)
        left = moves = 0
        for c in chunks:
            goal = goals.get(c['volume_id'])
            if goal is None:
                continue
            have = c['replicas']
            copies = max(goal - len(have) - len(c['joining']), 0) + len(
                c['joining'])
            draining = any(servers.get(s, {}).get('draining')
                           for s in have)
            # Moves running are counted from the jobs (repair_status).
            running = (c['volume_id'], c['index']) in self._jobs
            if len(have) > goal:
                moves += not running            # a replica to retire
            elif draining:
                moves += not running
                copies += 1                     # the drain's copy
            if copies:
                left += copies * per_replica[c['volume_id']] // max(
                    held.get(c['volume_id'], 0), 1)
        self._progress = {'bytes_left_estimate': left,
                          'moves_pending': moves}

    async def _repair_loop(self):
        # Chunk servers report what they hold at registration: after a
        # master (re)start, wait for them before judging what is missing.
        await asyncio.sleep(max(self.server_timeout, self.repair_interval))
        while True:
            started = time.monotonic()
            self._replan.clear()
            try:
                await self.repair_round()
            except Exception:  # noqa: BLE001 - keep repairing
                LOG.exception('Planning repairs failed')
            # Next round after repair_interval, or as soon as a copy ends
            # (its source and target can take the next one) or a server
            # registers (a returning server's catch-up starts): else the
            # copies of a lost server go at per_server copies per interval
            # whatever the disks and network could do.
            try:
                await asyncio.wait_for(self._replan.wait(),
                                       self.repair_interval)
            except TimeoutError:
                continue
            await asyncio.sleep(max(
                0.0, started + min(REPLAN_GAP, self.repair_interval)
                - time.monotonic()))

    async def repair_round(self):
        """Plan copies of the chunks that lack some and start them (one
        round at a time: POST /v1/repair runs one besides the loop's).
        Only the leader plans."""
        if not self.is_leader():
            raise self.not_leader()
        await self._start_resyncs()
        if self._round_lock is None:
            self._round_lock = asyncio.Lock()
        async with self._round_lock:
            return await self._repair_round()

    async def _repair_round(self):
        held = {}
        chunks, goals, servers = await self.db(
            self.store.repair_records, held, self.rebalance_moves)
        self._note_progress(chunks, goals, servers, held)
        busy = {}
        for job in self._jobs.values():
            for sid in (job.source, job.target):
                busy[sid] = busy.get(sid, 0) + 1
        self._finish_retires(chunks, servers)
        await self._abandon_orphans(chunks)
        chunks = [c for c in chunks
                  if (c['volume_id'], c['index']) not in self._jobs]
        now = time.monotonic()
        self._avoid = {s: t for s, t in self._avoid.items() if t > now}
        chunks = [c for c in chunks if self._held_back.get(
            (c['volume_id'], c['index']), (0,))[0] <= now]
        servers = self._suspected(servers)
        jobs, self._summary = repair.plan(
            chunks, goals, servers, time.time(), self.replica_grace,
            self.store.failure_domain, busy, self.repair_per_server,
            set(self._avoid), rebalance=self.rebalance_moves,
            threshold=self.rebalance_threshold)
        for job in jobs:
            self._jobs[(job.volume_id, job.index)] = job
            asyncio.get_running_loop().create_task(
                self._run_job(job, servers[job.source]))
        return jobs

    def resync_soon(self):
        """A chunk's primary was dropped (it failed, perhaps after
        forwarding its last write to some replicas only) and the chunk
        marked in the database: have the new primary make the replicas
        identical (RESYNC) now.  Retried every repair round until it is
        done, by whichever master leads then."""
        asyncio.get_running_loop().create_task(self._start_resyncs())

    async def _start_resyncs(self):
        try:
            keys = await self.db(self.store.pending_resyncs)
        except exception.UrsaError as e:
            LOG.warning('Reading the chunks to resync failed: %s', e)
            return
        self._resyncs_pending = len(keys)
        for key in keys:
            if key not in self._resyncing:
                self._resyncing.add(key)
                asyncio.get_running_loop().create_task(self._resync(key))

    async def _resync(self, key):
        if self._resync_slots is None:
            self._resync_slots = asyncio.Semaphore(RESYNC_CONCURRENCY)
        try:
            async with self._resync_slots:
                await self._resync_one(key)
        finally:
            self._resyncing.discard(key)

    async def _resync_one(self, key):
        try:
            m = await self.db(self.store.chunk_map, key[0], key[1], 1)
            chunk = (m['chunks'] or [None])[0]
            if chunk is None:
                return                  # deleted meanwhile
            if len(chunk['replicas']) > 1:
                primary = chunk['replicas'][0]
                reply = await self.chunkservers.send(
                    primary, lambda rid: control.encode_resync(
                        rid, key[0], key[1], chunk['epoch']),
                    timeout=REBUILD_TIMEOUT)
                fixed = control.decode_count_ok(reply.body)
                LOG.info('Chunk %s/%d: replicas compared after its primary '
                         'was dropped; %d block(s) made identical', *key,
                         fixed)
            # One replica left: nothing to compare.
            await self.db(self.store.resync_done, *key, chunk['epoch'])
            self._resyncs_pending = max(self._resyncs_pending - 1, 0)
        except exception.NotFound:
            pass                        # the volume is gone, and its mark
        except exception.UrsaError as e:
            LOG.warning('Chunk %s/%d: resync after its primary was dropped '
                        'failed (%s); the next repair round tries again',
                        *key, e)

    def note_drop(self, server_id, volume_id, index, epoch):
        """``server_id`` left chunk ``volume_id``/``index`` at ``epoch``:
        tell it with its next heartbeat (a primary tells it at once, but
        cannot across a partition), so it serves no read to a client
        holding an older map."""
        drops = self._drops.setdefault(server_id, {})
        if len(drops) < MAX_DROPS_KEPT:
            drops[(volume_id, index)] = epoch

    async def tell_dropped(self, volume_id, chunk, server_id):
        """Tell ``server_id``, just dropped from ``chunk`` (the master's
        JSON, at its new epoch) by its primary or a client, that it left,
        before the drop is answered: its primary could not reach it, but
        this master may, and its next heartbeat (which would tell it) may
        be seconds away.  Until it knows, it would serve the bytes it holds
        to a reader with the old map, older than the writes acknowledged
        without it from now on.  The epoch is sent as a forwarded empty
        write, which it confirms with this master: it then marks its copy
        stale and answers StaleReplica.  A server that does not answer
        within TELL_DROPPED_WAIT (dead, or cut off from this master too:
        it is marked down and serves no read past its lease, see
        chunkserver.controlplane) is told in the background."""
        try:
            server = await self.db(self.store.get_server, server_id)
        except exception.NotFound:
            return
        if server['state'] != 'up':
            return
        epoch = chunk['epoch']
        bump = codec.WriteRequest(
            volume_id, chunk['index'], epoch, 0, 0, 0, 0,
            [r['id'] for r in chunk['replicas']], b'', codec.FLAG_IF_ABSENT)

        async def tell():
            try:
                await self.chunkservers.send(
                    server, lambda rid: codec.encode_replicate(rid, bump,
                                                               epoch))
            except (exception.StaleReplica, exception.StaleEpoch):
                pass        # told: its copy is stale, or it moved on
            except exception.UrsaError as e:
                LOG.info('Chunk %s/%d: server %d, dropped at epoch %d, '
                         'was not told (%s); its next heartbeat tells it',
                         volume_id, chunk['index'], server_id, epoch, e)
        task = asyncio.ensure_future(tell())
        self._telling.add(task)
        task.add_done_callback(self._telling.discard)
        try:
            await asyncio.wait_for(asyncio.shield(task), TELL_DROPPED_WAIT)
        except TimeoutError:
            pass

    def take_drops(self, server_id):
        """[(volume id, index, epoch)] ``server_id`` left since its last
        heartbeat."""
        return [[v, i, e] for (v, i), e in
                self._drops.pop(server_id, {}).items()]

    def seen(self, server_id, lost_cache=False):
        """A chunk server registered or sent a heartbeat; ``lost_cache``:
        it restarted after its machine crashed."""
        self._heard.add(server_id)
        if lost_cache:
            self._lost_cache.add(server_id)
        if server_id not in self._lost_cache:
            self._live.add(server_id)

    def live_servers(self):
        """The servers that reached this master since it started, are not
        marked down since, and did not lose unsynced writes in a crash of
        their machine: their copies hold what they acknowledged."""
        return set(self._live)

    def note_failure(self, server_id):
        """A primary dropped ``server_id`` from a chunk: it failed a write
        (it may be dead, not yet marked down)."""
        self._failed_at[server_id] = time.time()

    def _suspected(self, servers):
        """``servers`` where those that failed a write and have not sent a
        heartbeat since are taken as down since that failure: the planner
        then waits for them the grace period, as for a server marked down,
        instead of copying to a dead one, then elsewhere in full."""
        out = dict(servers)
        for sid, at in list(self._failed_at.items()):
            s = servers.get(sid)
            if s is None or s['last_seen'] > at or s['state'] != 'up':
                del self._failed_at[sid]
                continue
            out[sid] = dict(s, state='down', down_since=at)
        return out

    def _finish_retires(self, chunks, servers):
        """Start again the retires that left their server a joining copy
        (see retire): not finished, that copy would count for one the
        chunk lacks, and nothing would be copied for 10 minutes (the
        orphans' wait)."""
        by_key = {(c['volume_id'], c['index']): c for c in chunks}
        for key, sid in list(self._leaving.items()):
            if key in self._jobs:
                continue
            c = by_key.get(key)
            if c is None or sid not in c['joining'] or sid not in servers:
                del self._leaving[key]      # done, or gone with its chunk
                continue
            job = repair.Job(key[0], key[1], c['epoch'], sid, None,
                             repair.TRIM, sid)
            self._jobs[key] = job
            asyncio.get_running_loop().create_task(
                self._run_job(job, servers[sid]))

    async def _abandon_orphans(self, chunks):
        """Joining copies no copy of this master's makes (their primary or
        an earlier master died mid-copy, or could not say it ended) are
        given up once a copy could not still be running, so the chunk is
        planned again."""
        now = time.monotonic()
        seen = {}
        for c in chunks:
            key = (c['volume_id'], c['index'])
            if c['joining'] and key not in self._jobs:
                seen[key] = self._orphans.get(key, now)
                if now - seen[key] > REBUILD_TIMEOUT:
                    try:
                        await self.db(self.store.abandon_joins, *key,
                                      c['epoch'])
                        LOG.warning('Chunk %s/%d: joining copies %s were '
                                    'left by a copy that ended without a '
                                    'word; given up', *key, c['joining'])
                        c['joining'] = []
                    except exception.UrsaError as e:
                        LOG.info('Chunk %s/%d: joining copies not given up '
                                 'yet (%s)', *key, e)
                    seen.pop(key, None)
        self._orphans = seen

    async def _run_job(self, job, source):
        key = (job.volume_id, job.index)
        result = 'failed'
        try:
            if job.target is not None and not await self._copy(job, source):
                return
            if job.retire is not None and not await self.retire(
                    job.volume_id, job.index, job.retire):
                return
            result = 'done'
        except exception.UrsaError as e:
            LOG.warning('Chunk %s/%d: replica on server %d not retired '
                        '(%s); the planner tries again', *key, job.retire, e)
        except Exception:  # noqa: BLE001 - the job ends; keep repairing
            LOG.exception('Chunk %s/%d: job %s failed', *key, job)
        finally:
            self.repair_results[result] += 1
            self._jobs.pop(key, None)
            self._replan.set()

    async def _copy(self, job, source):
        """REBUILD on the chunk's primary: whether the copy is made."""
        key = (job.volume_id, job.index)
        LOG.info('Chunk %s/%d (%s): copying it from server %d to server %d',
                 job.volume_id, job.index, repair.REASONS[job.priority],
                 job.source, job.target)
        try:
            reply = await self.chunkservers.send(
                source, lambda rid: control.encode_rebuild(
                    rid, job.volume_id, job.index, job.epoch, job.target),
                timeout=REBUILD_TIMEOUT)
            copied = control.decode_count_ok(reply.body)
        except exception.UrsaError as e:
            # Not that target again for a while: it may be dead and not
            # yet marked down.
            if isinstance(e, (exception.ChecksumError,
                              exception.Unavailable)):
                # Not the target's fault: a bad block on the source (that
                # chunk waits, longer each time, while it is mended), or
                # the chunk itself was busy (a revert or a snapshot
                # collection raced the copy, its writes kept changing
                # it): the chunk is tried again soon, to the same target.
                rot = isinstance(e, exception.ChecksumError)
                delay = min(2 * self._held_back.get(
                    key, (0, 1.0 if rot else 0.25))[1],
                    HOLD_BACK_MAX if rot else AVOID_AFTER_FAILURE)
                self._held_back[key] = (time.monotonic() + delay, delay)
            else:
                self._avoid[job.target] = time.monotonic() + max(
                    AVOID_AFTER_FAILURE, 3 * self.repair_interval)
                self.note_failure(job.target)
            LOG.warning('Chunk %s/%d: copy from server %d to server %d '
                        'failed (%s); the planner tries again', *key,
                        job.source, job.target, e)
            return False
        self._held_back.pop(key, None)
        self.copied_bytes += copied
        self._copies.append((time.monotonic(), copied))
        return True

    async def retire(self, volume_id, index, server_id):
        """Take a replica the chunk no longer needs (it has as many
        without it as its volume asks for) out of the chunk, safely for
        readers holding old chunk maps:

        1. the server leaves the replica set for the joining copies
           (epoch + 1): it still takes every write, so while it does not
           know, what it serves is current;
        2. it is told the new epoch (and so are the replicas): from then
           on it serves no reads, and the primary, a new one if it was
           the primary, forwards the writes to it;
        3. it is taken out of the joining copies (epoch + 1), the
           replicas told;
        4. its copy is deleted: a reader with an old map asks it and is
           told the epoch moved on (it knows a newer one), and refreshes.

        If the server cannot be told (2), it stays a joining copy: a
        forwarded write tells it, or drops it if it is gone; the copy
        is not deleted; every repair round then starts the retire again
        from (2), with the chunk's epoch of then (another change, a drop
        or a promotion, may have moved it meanwhile).  A server that is
        not up is not told: it serves no read past its lease."""
        key = (volume_id, index)
        members = await self.db(self.store.chunk_members, volume_id, index)
        if (self._leaving.get(key) == server_id and
                server_id in members['joining']):
            found = await self.db(self.store.chunk_map, volume_id, index, 1)
            chunk = found['chunks'][0]
            LOG.info('Chunk %s/%d: retiring server %d again (epoch %d)',
                     volume_id, index, server_id, chunk['epoch'])
        else:
            chunk = await self.db(self.store.leave_replica, volume_id, index,
                                  server_id, members['epoch'])
            self._leaving[key] = server_id
        leaving = next(r for r in chunk['joining'] if r['id'] == server_id)
        ids = [r['id'] for r in chunk['replicas']]
        if leaving['state'] == 'up':
            failed = await self._announce(volume_id, chunk, [leaving] +
                                          chunk['replicas'])
            if server_id in failed:
                LOG.warning('Chunk %s/%d: server %d did not learn it left '
                            'the replica set (epoch %d); it stays a joining '
                            'copy, and its copy is kept, until the next '
                            'repair round tells it', volume_id, index,
                            server_id, chunk['epoch'])
                return False
        # A Conflict here (the chunk changed since it was read) ends the
        # job; the next round starts it again.
        chunk = await self.db(self.store.abandon_join, volume_id, index,
                              server_id, chunk['epoch'])
        self._leaving.pop(key, None)
        await self._announce(volume_id, chunk, chunk['replicas'])
        try:
            await self.chunkservers.send(
                leaving, lambda rid: control.encode_delete(
                    rid, volume_id, index), timeout=30.0)
        except exception.UrsaError as e:
            LOG.warning('Chunk %s/%d: the copy on server %d, which left '
                        'the replica set, was not deleted (%s); it serves '
                        'no reads, and ursa cluster check --repair deletes '
                        'it', volume_id, index, server_id, e)
        self.retired += 1
        LOG.info('Chunk %s/%d: server %d retired (epoch %d, replicas %s)',
                 volume_id, index, server_id, chunk['epoch'], ids)
        return True

    async def _announce(self, volume_id, chunk, servers):
        """Tell ``servers`` (dicts) the chunk's new epoch with an empty
        copy-up, which each confirms with this master; return the ids of
        those that did not take it."""
        epoch = chunk['epoch']
        bump = codec.WriteRequest(
            volume_id, chunk['index'], epoch, 0, 0, 0, 0,
            [r['id'] for r in chunk['replicas']], b'', codec.FLAG_IF_ABSENT)

        async def one(s):
            try:
                reply = await self.chunkservers.send(
                    s, lambda rid: codec.encode_replicate(rid, bump, epoch))
                codec.decode_write_ok(reply.body)
                return None
            except exception.UrsaError as e:
                LOG.warning('Chunk %s/%d: server %d did not take epoch %d '
                            '(%s)', volume_id, chunk['index'], s['id'],
                            epoch, e)
                return s['id']
        results = await asyncio.gather(*(one(s) for s in servers))
        return [r for r in results if r is not None]

    # --- leases and fencing --------------------------------------------

    async def fence(self, volume_id, generation):
        """Tell every chunk server that is up about a new generation."""
        failed = await self._broadcast(
            lambda rid: control.encode_fence(rid, volume_id, generation))
        if failed:
            LOG.warning('Volume %s generation %d: chunk servers %s did not '
                        'confirm the fence; they learn it when they '
                        're-register', volume_id, generation, failed)

    async def acquire_lease(self, ref, holder, ttl, force=False,
                            handover=False):
        """A new generation (or a live migration's handover, which is
        one once the source released the lease or the master took it by
        force: store.acquire_lease), committed, then pushed (FENCE): a
        source that did not hand over writes nothing more."""
        lease = await self.db(self.store.acquire_lease, ref, holder, ttl,
                              force, handover)
        await self.fence(lease['volume_id'], lease['generation'])
        return lease

    async def revoke_lease(self, ref):
        result = await self.db(self.store.revoke_lease, ref)
        await self.fence(result['volume_id'], result['generation'])
        return result

    async def host_heartbeat(self, host, interval, stopping=False):
        """Note a client host's storage heartbeat; whether it is fenced
        (its agent then stops its instances: they run elsewhere), None
        when the fenced hosts cannot be read."""
        # Noted on receipt: a backlog on the database thread delays the
        # answer, never the beat the evacuator judges.
        self.host_beats.beat(host, interval, stopping)
        fenced = await self._fenced_hosts()
        return {'host': host,
                'fenced': None if fenced is None else host in fenced,
                'fence_reason': fenced.get(host) if fenced else None,
                'leading_for': round(self.host_beats.leading_for(), 3)}

    async def _fenced_hosts(self):
        """{host: reason} of the fenced hosts, read at most once a second
        for every heartbeat: one read at a time, shared (once read, in
        the background: an answer is at most a read behind, and fences
        and unfences through this master are in it at once).  None if
        never read and the read fails."""
        task = self._fenced_task
        if task is None or task.done():
            if self._fenced_read is None or \
                    time.monotonic() - self._fenced_read[0] >= 1.0:
                task = self._fenced_task = asyncio.ensure_future(
                    self._read_fenced())
        if self._fenced_read is None and task is not None:
            await asyncio.shield(task)
        return self._fenced_read[1] if self._fenced_read else None

    async def _read_fenced(self):
        try:
            rows = await self.db(self.store.list_fenced_hosts)
        except Exception as e:  # noqa: BLE001 - the last read stands
            LOG.warning('Reading the fenced hosts failed: %s', e)
            return
        self._fenced_read = (time.monotonic(),
                             {r['host']: r['reason'] for r in rows})

    def _note_fence(self, host, reason):
        """A fence (reason) or unfence (None) made through this master,
        in the cached fenced hosts at once."""
        if self._fenced_read is not None:
            fenced = dict(self._fenced_read[1])
            if reason is None:
                fenced.pop(host, None)
            else:
                fenced[host] = store_common.fence_reasons(fenced.get(host),
                                                          reason)
            self._fenced_read = (self._fenced_read[0], fenced)

    async def unfence_host(self, host):
        gone = await self.db(self.store.unfence_host, host)
        self._note_fence(host, None)
        return gone

    async def fence_host(self, host, reason=None):
        result = await self.db(self.store.fence_host, host, reason)
        self._note_fence(host, reason or '')
        # (fenced_before: a retry's, see store.fence_host.)
        await asyncio.gather(*(self.fence(x['volume_id'], x['generation'])
                               for x in result['fenced'] +
                               result.get('fenced_before', [])))
        return result

    # --- snapshots, revert, deletion -----------------------------------

    async def create_snapshot(self, ref, name):
        if self._swept is not None:
            # Not before the previous master's unfinished snapshots are
            # forgotten: a retried creation would find its name taken.
            await self._swept.wait()
        snap = await self.db(self.store.begin_snapshot, ref, name)
        # Every primary must refuse writes made before the snapshot before
        # it is reported created: writers then learn the new sequence and
        # preserve what the snapshot holds.
        failed = await self._broadcast(lambda rid: control.encode_snapshot(
            rid, snap['volume_id'], snap['seq']))
        result = await self.db(self.store.finish_snapshot, snap['id'],
                               not failed)
        if failed:
            await self.gc(snap['volume_id'])
            raise exception.Unavailable(
                reason='chunk servers %s did not confirm '
                'snapshot %s; nothing was created, retry when they are up or '
                'marked down' % (failed, name))
        return result

    async def delete_snapshot(self, ref):
        snap, action = await self.db(self.store.delete_snapshot, ref)
        if action == 'deleted':
            await self.gc(snap['volume_id'])
        await self.reap()

    async def revert(self, ref, snapshot):
        vol, seq = await self.db(self.store.begin_revert, ref, snapshot)
        failed = await self._broadcast(lambda rid: control.encode_revert(
            rid, vol['id'], seq, vol['snap_seq']), timeout=300)
        if failed:
            raise exception.Unavailable(
                reason='chunk servers %s did not revert; '
                'volume %s stays "reverting": retry the revert' % (
                    failed, vol['name']))
        await self.db(self.store.finish_revert, vol['id'], seq)
        return await self.db(self.store.get_volume, vol['id'])

    async def detach_parent(self, ref):
        vol = await self.db(self.store.detach_parent, ref)
        await self.reap()
        return vol

    async def delete_volume(self, ref):
        vol, action = await self.db(self.store.begin_delete, ref)
        if action == 'delete':
            await self._delete_chunks(vol)
        await self.reap()

    async def _delete_chunks(self, vol):
        # Every server that is up forgets the volume now; one that is down
        # learns at its next registration that these chunks are orphans.
        await self._broadcast(
            lambda rid: control.encode_delete(rid, vol['id']))
        await self.db(self.store.finish_delete, vol['id'])

    async def gc(self, volume_id):
        """Tell the chunk servers which snapshots of a volume are left, so
        they free the blocks only deleted ones needed."""
        seq, live = await self.db(self.store.live_seqs, volume_id)
        failed = await self._broadcast(lambda rid: control.encode_snapshot(
            rid, volume_id, seq, live, gc=True), timeout=60)
        if failed:
            LOG.warning('Volume %s: chunk servers %s did not free deleted '
                        'snapshots\' blocks; the next snapshot deletion '
                        'retries', volume_id, failed)

    async def reap(self):
        """Empty the trash as far as it goes (cascades up clone chains)."""
        while True:
            step = await self.db(self.store.reap)
            if step is None:
                return
            kind, item = step
            if kind == 'snapshot':
                await self.gc(item['volume_id'])
            else:
                await self._delete_chunks(item)

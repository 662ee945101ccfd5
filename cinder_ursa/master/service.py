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
  per server at once.

Leader election will live here too.
Database calls run on one worker thread (:meth:`MasterService.db`), so
the event loop never blocks on the database.
"""

import asyncio
import concurrent.futures
import functools
import logging
import time

from cinder_ursa import exception
from cinder_ursa.master import chunkservers
from cinder_ursa.master import repair
from cinder_ursa.protocol import control

LOG = logging.getLogger(__name__)

# A snapshot still 'creating' after this long lost its master mid-way.
UNFINISHED_AFTER = 60.0
UNFINISHED_SWEEP = 10.0
# A chunk copy longer than this is given up (64 MiB takes about a second).
REBUILD_TIMEOUT = 600.0
# Seconds a server a copy failed to is not chosen again (at least).
AVOID_AFTER_FAILURE = 10.0
# A copy that ends plans the next round at once (its slots are free), but
# rounds start at least this many seconds apart.
REPLAN_GAP = 1.0


class MasterService:
    """The cluster protocols over a :class:`MetadataStore` ``store``."""

    def __init__(self, store, key, server_timeout=15.0, replica_grace=600.0,
                 repair_interval=10.0, repair_per_server=2):
        self.store = store
        self.server_timeout = server_timeout
        self.replica_grace = replica_grace
        self.repair_interval = repair_interval
        self.repair_per_server = repair_per_server
        self.chunkservers = chunkservers.ChunkServers(key)
        self._db = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix='ursa-db')
        self._monitor = None
        self._repairer = None
        self._jobs = {}             # (volume, index) -> running Job
        self._avoid = {}            # target -> until when (a copy failed)
        self._orphans = {}          # (volume, index) -> since when joining
                                    # copies are seen with no copy running
        self._summary = {}
        self._replan = asyncio.Event()
        self.copied_bytes = 0
        # Allocated bytes per chunk server and volume, from heartbeats.
        self.usage = {}

    async def db(self, fn, *args, **kwargs):
        """Run ``fn`` (a store method) on the database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._db, functools.partial(fn, *args, **kwargs))

    def start(self):
        loop = asyncio.get_running_loop()
        self._monitor = loop.create_task(self._watch_servers())
        self._repairer = loop.create_task(self._repair_loop())

    def stop(self):
        for task in (self._monitor, self._repairer):
            if task:
                task.cancel()
        self.chunkservers.close()
        self._db.shutdown(wait=True)

    # --- usage (from heartbeats) ---------------------------------------

    def note_usage(self, server_id, volumes):
        """``volumes``: {volume id: bytes} a chunk server reported."""
        self.usage[server_id] = volumes

    def allocated_total(self):
        return sum(sum(u.values()) for u in self.usage.values())

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
        while True:
            await asyncio.sleep(interval)
            try:
                await self.db(self.store.mark_down, self.server_timeout)
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + UNFINISHED_SWEEP
                    for vid in await self.db(
                            self.store.forget_unfinished_snapshots,
                            UNFINISHED_AFTER):
                        await self.gc(vid)
            except Exception:  # noqa: BLE001 - keep watching
                LOG.exception('Checking chunk server heartbeats failed')

    # --- repair ----------------------------------------------------------

    def registered(self, server_id):
        """Chunk server ``server_id`` (re)registered: a copy that failed
        to it before (it was dead) may succeed now: plan at once."""
        self._avoid.pop(server_id, None)
        self._replan.set()

    def repair_status(self):
        """The planner's last counts, the copies running and the bytes
        copied since this master started."""
        return dict(self._summary, running=len(self._jobs),
                    copied_bytes=self.copied_bytes)

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
        """Plan copies of the chunks that lack some and start them."""
        chunks, goals, servers = await self.db(self.store.repair_records)
        busy = {}
        for job in self._jobs.values():
            for sid in (job.source, job.target):
                busy[sid] = busy.get(sid, 0) + 1
        await self._abandon_orphans(chunks)
        chunks = [c for c in chunks
                  if (c['volume_id'], c['index']) not in self._jobs]
        now = time.monotonic()
        self._avoid = {s: t for s, t in self._avoid.items() if t > now}
        jobs, self._summary = repair.plan(
            chunks, goals, servers, time.time(), self.replica_grace,
            self.store.failure_domain, busy, self.repair_per_server,
            set(self._avoid))
        for job in jobs:
            self._jobs[(job.volume_id, job.index)] = job
            asyncio.get_running_loop().create_task(
                self._run_job(job, servers[job.source]))
        return jobs

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
        LOG.info('Chunk %s/%d (%s): copying it from server %d to server %d',
                 job.volume_id, job.index, repair.REASONS[job.priority],
                 job.source, job.target)
        try:
            conn = await self.chunkservers.pool.get(source['address'],
                                                    source['port'])
            reply = await conn.call(
                control.encode_rebuild, job.volume_id, job.index, job.epoch,
                job.target, timeout=REBUILD_TIMEOUT)
            copied = control.decode_count_ok(reply.body)
            self.copied_bytes += copied
        except exception.UrsaError as e:
            # Not that target again for a while: it may be dead and not
            # yet marked down.
            self._avoid[job.target] = time.monotonic() + max(
                AVOID_AFTER_FAILURE, 3 * self.repair_interval)
            LOG.warning('Chunk %s/%d: copy from server %d to server %d '
                        'failed (%s); the planner tries again', *key,
                        job.source, job.target, e)
        finally:
            self._jobs.pop(key, None)
            self._replan.set()

    # --- leases and fencing --------------------------------------------

    async def fence(self, volume_id, generation):
        """Tell every chunk server that is up about a new generation."""
        failed = await self._broadcast(
            lambda rid: control.encode_fence(rid, volume_id, generation))
        if failed:
            LOG.warning('Volume %s generation %d: chunk servers %s did not '
                        'confirm the fence; they learn it when they '
                        're-register', volume_id, generation, failed)

    async def acquire_lease(self, ref, holder, ttl, force=False):
        lease = await self.db(self.store.acquire_lease, ref, holder, ttl,
                              force)
        await self.fence(lease['volume_id'], lease['generation'])
        return lease

    async def revoke_lease(self, ref):
        result = await self.db(self.store.revoke_lease, ref)
        await self.fence(result['volume_id'], result['generation'])
        return result

    async def fence_host(self, host, reason=None):
        result = await self.db(self.store.fence_host, host, reason)
        await asyncio.gather(*(self.fence(x['volume_id'], x['generation'])
                               for x in result['fenced']))
        return result

    # --- snapshots, revert, deletion -----------------------------------

    async def create_snapshot(self, ref, name):
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
        await self.db(self.store.finish_revert, vol['id'])
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

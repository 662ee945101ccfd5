"""Deep scrub: rot found before a reader meets it, and repaired.

Every block is checked against its CRC when it is read, but a block
nobody reads (a snapshot's, a cold volume's) can rot unseen until the day
its other copies are lost too.  Each chunk server therefore reads every
data block of every replica it holds, head and snapshot layers, once per
``scrub_interval``, and checks its CRC:

* paced (:class:`Pacer`): the bytes of the pass spread over the interval
  (each server's pass a little shorter, at random, so servers do not
  align), faster while no client uses this server, paused while clients
  do unless the pass is behind its schedule;
* in small steps (:data:`UNIT_BLOCKS`), read in a worker thread: the event
  loop serves clients between any two;
* from where it stopped: the position and counts are saved every few
  seconds in ``scrub-cursor`` in the data directory;
* on the replicas that serve reads only: a copy being brought up to date
  (joining), stale, not checked since a crash (unverified) or not
  resynced since one is skipped: its blocks are about to be compared or
  replaced anyway.

A block found bad is read again in the event loop (a write may have been
between its data and its CRC when the thread read it), then repaired from
a replica at the current epoch that holds it valid: by this server when
it is the chunk's primary, else by the primary (REPAIR, :mod:`.repair`),
which pushes its valid block to every replica.  A block whose only copy
is bad is reported (logged, counted, and shown by ``ursa cluster
status``), never rewritten.  More than ``scrub_error_limit`` bad blocks
in one pass mean a failing disk, not rot: the data directory is failed
(:mod:`.diskhealth`), the master re-replicates its chunks from the other
copies, and nothing more is repaired from or onto it.

The light scrub reads no data: once per ``light_scrub_interval``, for
each chunk this server is the primary of (chunks spread evenly over the
interval), it compares the metadata entries (epoch, blocks in use, CRC
and sequence of each block, head and layers) of every replica with its
own, as a catch-up does (ENTRIES).  Replicas that differ at the same
epoch (a write that reached some of them only, a block rewritten behind
the server's back with a matching CRC) are then compared again with the
chunk held, so no write in flight counts, and made identical as after a
crash (:mod:`.resync`): the primary's valid block is pushed.
"""

import asyncio
import json
import logging
import os
import random
import time

from cinder_ursa import exception
from cinder_ursa.chunkserver import metrics
from cinder_ursa.chunkserver.store import mending
from cinder_ursa.chunkserver.store.files import atomic_write
from cinder_ursa.protocol.chunkfile import BLOCK

LOG = logging.getLogger(__name__)

CURSOR = 'scrub-cursor'     # in the data directory: see the module
# Blocks read and checked per step (512 KiB).  A chunk server scrubbing
# 256 MiB from the page cache spent 2.1 CPU-s per GiB in 256 KiB steps,
# 1.2 in 512 KiB steps and 0.8 in 1 MiB steps (the step's hand-off to the
# worker thread and its pacing, not the CRC, dominate); client 4 KiB
# reads meanwhile slowed more with 1 MiB steps (p99 0.39 -> 0.71 ms).
UNIT_BLOCKS = 128
JITTER = 0.1                # a pass takes (1 - JITTER * random) intervals
IDLE_SPEEDUP = 1.25         # rate while idle / rate that fits the interval
BUSY_PAUSE = 0.5            # s between looks while paused for clients
BURST = 0.1                 # s of the rate that may go at once
MIN_RATE = 256 * 1024       # bytes/s: a pass that is done keeps this pace
SAVE_EVERY = 5.0            # s between saves of the cursor
REPAIR_TRIES = 3            # attempts at repairing a bad block per pass


class Pacer:
    """The pace of one pass: ``total`` bytes by ``seconds`` from now.

    The rate is the pass's bytes over its length, or what is left over
    the time left when the pass fell behind (the time left never counted
    below a twentieth of the pass: a pass that overran does not turn into
    a storm; never less than :data:`MIN_RATE`), times
    :data:`IDLE_SPEEDUP` while no client uses this server, so idle time
    earns a lead.  While clients do (``throttle.busy()``: a request in
    the last second), the scrub waits as long as it is ahead of the
    schedule (``total`` spread evenly over the pass) and goes at the
    rate that fits when it is not: client I/O gets the disk, and the
    pass still ends in time.
    """

    def __init__(self, throttle, clock=time.monotonic, sleep=asyncio.sleep):
        self.throttle = throttle
        self._clock, self._sleep = clock, sleep
        self.begin(0, 0, 1.0)

    def begin(self, total, done, seconds):
        """A pass (or what is left of it after a restart): ``done`` of
        ``total`` bytes are scrubbed, the rest is due in ``seconds``."""
        self.total, self.done = total, done
        self._done0 = done
        self._start = self._clock()
        self._length = max(seconds, 1.0)
        self._end = self._start + self._length
        self._base = max(total - done, 0) / self._length
        self._tokens = 0.0
        self._at = self._start
        self.paused = 0.0           # s waited for clients this pass

    def rate(self):
        """Bytes per second that end the pass in time, from now."""
        now = self._clock()
        left = max(self.total - self.done, 0)
        secs = max(self._end - now, self._length / 20.0)
        return max(self._base, left / secs, MIN_RATE)

    def ahead(self):
        """Whether more is done than an even spread would have by now."""
        now = self._clock()
        share = min((now - self._start) / self._length, 1.0)
        return self.done - self._done0 > (
            self.total - self._done0) * share

    def eta(self):
        """Seconds until the pass is done at the current rate."""
        return max(self.total - self.done, 0) / self.rate()

    def measured_rate(self):
        """Bytes per second scrubbed since :meth:`begin`."""
        secs = self._clock() - self._start
        return (self.done - self._done0) / secs if secs > 0 else 0.0

    async def take(self, nbytes):
        """Count ``nbytes`` scrubbed; wait for as long as the pace says
        before the next step."""
        self.done += nbytes
        if self.done >= self.total:
            return      # the pass is done: its end waits for nobody
        while self.throttle.busy() and self.ahead():
            self.paused += BUSY_PAUSE
            await self._sleep(BUSY_PAUSE)
        rate = self.rate() * (1.0 if self.throttle.busy() else IDLE_SPEEDUP)
        now = self._clock()
        self._tokens = min(self._tokens + (now - self._at) * rate,
                           rate * BURST)
        self._at = now
        self._tokens -= nbytes
        if self._tokens < 0:
            await self._sleep(-self._tokens / rate)


class ScrubState:
    """What the scrub of a data directory did, kept in its cursor file
    across restarts: the pass (its start and due end, wall clock), the
    position reached (volume, chunk, layer, block) and the counts."""

    FIELDS = ('pass_started', 'pass_due', 'position', 'bytes_done',
              'bytes_total', 'passes', 'last_pass_ended', 'found',
              'repaired', 'unrepaired', 'pass_found', 'last_error')

    def __init__(self, path):
        self.path = path
        self.pass_started = self.pass_due = None
        self.position = None
        self.bytes_done = self.bytes_total = 0
        self.passes = 0
        self.last_pass_ended = None
        self.found = self.repaired = self.unrepaired = 0
        self.pass_found = 0
        self.last_error = None
        self._saved = 0.0
        self.load()

    def load(self):
        try:
            with open(self.path) as f:
                saved = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            LOG.warning('Scrub cursor %s unreadable (%s): the scrub starts '
                        'a new pass', self.path, e)
            return
        for name in self.FIELDS:
            if name in saved:
                setattr(self, name, saved[name])
        if self.position is not None:
            self.position = tuple(self.position)

    def save(self, force=False):
        """Write the cursor (at most every :data:`SAVE_EVERY` seconds
        unless ``force``): a restart goes on from there."""
        now = time.monotonic()
        if not force and now - self._saved < SAVE_EVERY:
            return
        self._saved = now
        atomic_write(self.path, json.dumps(
            {name: getattr(self, name) for name in self.FIELDS}) + '\n')

    def new_pass(self, seconds):
        self.pass_started = time.time()
        self.pass_due = self.pass_started + seconds
        self.position = None
        self.bytes_done = self.pass_found = 0

    def pass_ended(self):
        return self.last_pass_ended is not None and \
            self.last_pass_ended >= self.pass_started

    def end_pass(self):
        self.passes += 1
        self.last_pass_ended = time.time()
        self.position = None


def _runs(blocks):
    """Sorted block numbers as (first, count) runs of neighbours."""
    runs = []
    for b in blocks:
        if runs and runs[-1][0] + runs[-1][1] == b:
            runs[-1][1] += 1
        else:
            runs.append([b, 1])
    return [tuple(r) for r in runs]


class Quarantined(Exception):
    """Too many bad blocks in a pass: the data directory was failed."""


class ScrubMixin:
    """The deep scrub of :class:`ChunkServer` (which provides ``store``,
    ``disk``, ``throttle``, ``ops``, ``recorded``, ``_suspect``,
    ``_registered``, ``_wake`` and ``repair_now``).  ``scrub_interval`` 0:
    no scrub."""

    def _init_scrub(self, interval, light_interval, error_limit):
        self.scrub_interval = interval
        self.light_scrub_interval = light_interval
        self.scrub_error_limit = error_limit
        self.scrub = ScrubState(os.path.join(self.store.data_dir, CURSOR))
        self.pacer = Pacer(self.throttle)
        self._scrubbing = False
        self.light = {'passes': 0, 'last_pass_ended': None, 'chunks': 0,
                      'differing_chunks': 0, 'blocks_made_identical': 0,
                      'last_error': None}

    async def _scrub_task(self):
        """The deep scrub; a bug in it is logged, and it starts again.
        Stopped, it saves where it is: the next start goes on from
        there."""
        while True:
            try:
                await self._scrub_forever()
                return
            except asyncio.CancelledError:
                try:
                    if self.scrub.pass_started is not None:
                        self.scrub.save(force=True)
                except OSError as e:
                    LOG.warning('Scrub cursor not saved: %s', e)
                raise
            except Exception:  # noqa: BLE001 - keep the server alive
                LOG.exception('Scrub failed; starting again in a minute')
                self._scrubbing = False
                await asyncio.sleep(60)

    def scrub_status(self):
        """The scrub's progress, for the heartbeat (``ursa cluster
        status``)."""
        st, p = self.scrub, self.pacer
        if not self.scrub_interval:
            state = 'off'
        elif self.disk.failure is not None:
            state = 'stopped'
        else:
            state = 'scrubbing' if self._scrubbing else 'waiting'
        return {
            'state': state, 'interval_s': self.scrub_interval,
            'pass_started': st.pass_started, 'pass_due': st.pass_due,
            'passes': st.passes, 'last_pass_ended': st.last_pass_ended,
            'bytes_done': st.bytes_done, 'bytes_total': st.bytes_total,
            'rate_bytes_per_s': int(p.measured_rate()) if self._scrubbing
            else 0,
            'eta_s': int(p.eta()) if self._scrubbing else None,
            'bad_blocks_found': st.found, 'bad_blocks_repaired': st.repaired,
            'bad_blocks_unrepaired': st.unrepaired,
            'last_error': st.last_error,
            'light': dict(self.light,
                          interval_s=self.light_scrub_interval)}

    def _scrubbable(self, c):
        """Whether the copy ``c`` serves reads, so is scrubbed: not one
        being brought up to date, stale, or suspect after a crash."""
        return (c is not None and self.disk.failure is None
                and not c.stale and not c.joining
                and (c.volume, c.index) not in self._suspect
                and not self.store.unverified(c))

    async def _scrub_forever(self):
        """Pass after pass; the first one starts at a random point of a
        tenth of the interval, so servers started together do not
        scrub in step."""
        await self._registered.wait()
        st = self.scrub
        if st.pass_started is None:
            await asyncio.sleep(random.uniform(0, self.scrub_interval *
                                               JITTER))
        while self.disk.failure is None:
            if st.pass_started is None or st.pass_ended():
                wait = (st.pass_due or 0) - time.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                st.new_pass(self.scrub_interval *
                            (1 - JITTER * random.random()))
                st.save(force=True)
            try:
                await self._scrub_pass()
            except Quarantined:
                return
            st.end_pass()
            st.save(force=True)
            LOG.info('Scrub pass %d of %s done: %d MiB checked, %d bad '
                     'block(s) found, %s', st.passes, self.store.data_dir,
                     st.bytes_done >> 20, st.pass_found,
                     'none left' if not st.unrepaired else
                     '%d never repaired so far' % st.unrepaired)

    async def _scrub_pass(self):
        """Scrub every replica from the saved position on."""
        st = self.scrub
        keys = sorted((v, i) for v, i, _ in self.store.chunk_list())
        total = 0
        for key in keys:
            c = self.store.held(*key)
            if self._scrubbable(c):
                total += self.store.data_bytes(c)
        st.bytes_total = max(total, st.bytes_done)
        # A pass resumed past its due time (the server was down long)
        # spreads what is left as the interval would, not at full speed.
        seconds = st.pass_due - time.time()
        if seconds <= 0:
            seconds = self.scrub_interval * (
                1 - st.bytes_done / st.bytes_total if st.bytes_total else 1)
        self.pacer.begin(st.bytes_total, st.bytes_done, seconds)
        self._scrubbing = True
        try:
            for key in keys:
                if st.position is not None and key < tuple(st.position[:2]):
                    continue
                c = self.store.held(*key)
                if not self._scrubbable(c):
                    continue
                t0, done = metrics.clock(), st.bytes_done
                try:
                    for layer in [0] + c.layer_ids():
                        first = 0
                        if st.position is not None and \
                                tuple(st.position[:2]) == key:
                            if layer < st.position[2]:
                                continue
                            if layer == st.position[2]:
                                first = st.position[3]
                        await self._scrub_file(c, layer, first)
                except Exception as e:
                    self.ops.done('scrub', metrics.clock() - t0,
                                  st.bytes_done - done, error=e)
                    raise
                self.ops.done('scrub', metrics.clock() - t0,
                              st.bytes_done - done)
        finally:
            self._scrubbing = False

    async def _scrub_file(self, c, layer, first):
        """Scrub the head (``layer`` 0) or one layer of a replica from
        block ``first``."""
        st = self.scrub
        key = (c.volume, c.index)
        fds = self.store.dup_files(c, layer)
        if fds is None:
            return
        data_fd, meta_fd, nblocks = fds
        loop = asyncio.get_running_loop()
        try:
            for at in range(first, nblocks, UNIT_BLOCKS):
                if self.store.held(*key) is not c or \
                        not self._scrubbable(c):
                    return      # deleted, dropped or rejoined meanwhile
                count = min(UNIT_BLOCKS, nblocks - at)
                bad, nbytes = await loop.run_in_executor(
                    None, mending.check_unit, data_fd, meta_fd, at, count)
                if bad:
                    await self._scrub_bad(c, layer, bad)
                st.bytes_done += nbytes
                self.recorded.scrub_blocks += nbytes // BLOCK
                st.position = (c.volume, c.index, layer, at + count)
                st.save()
                await self.pacer.take(nbytes)
        finally:
            os.close(data_fd)
            os.close(meta_fd)

    def _still_bad(self, c, layer, blocks):
        """Those of ``blocks`` that fail their CRC now (read in the event
        loop: no write is half done)."""
        out = []
        for first, count in _runs(blocks):
            entries, data = self.store.raw(c, first, count, layer)
            out.extend(first + i for i in mending.torn_blocks(entries,
                                                               data))
        return out

    async def _scrub_bad(self, c, layer, blocks):
        """Blocks of a replica that failed their CRC in a worker thread:
        counted, and repaired, unless the data directory turns out to be
        failing."""
        if self.store.held(c.volume, c.index) is not c:
            return
        bad = self._still_bad(c, layer, blocks)
        if not bad:
            return
        st = self.scrub
        st.found += len(bad)
        st.pass_found += len(bad)
        self.recorded.scrub_errors += len(bad)
        where = 'chunk %s/%d%s' % (c.volume, c.index,
                                   ' layer %d' % layer if layer else '')
        LOG.error('Scrub: %s block(s) %s fail their CRC on this replica',
                  where, bad)
        limit = self.scrub_error_limit
        if limit and st.pass_found > limit:
            self._scrub_quarantine(st.pass_found)
            raise Quarantined()
        for first, count in _runs(bad):
            await self._scrub_repair(c, layer, first, count, where)
        st.save(force=True)

    async def _scrub_repair(self, c, layer, first, count, where):
        st = self.scrub
        last = None
        for attempt in range(REPAIR_TRIES):
            try:
                await self.repair_now(c.volume, c.index, first, count, layer)
                last = None
                break
            except exception.ChecksumError as e:
                last = e        # no valid copy: never rewritten
                break
            except (exception.UrsaError, OSError) as e:
                last = e
                await asyncio.sleep(0.5 * 2 ** attempt)
        left = [] if self.store.held(c.volume, c.index) is not c else \
            self._still_bad(c, layer, range(first, first + count))
        st.repaired += count - len(left)
        self.recorded.scrub_repairs += count - len(left)
        if left:
            st.unrepaired += len(left)
            why = last or 'still bad after the repair'
            # A checksum error names the chunk and blocks itself.
            st.last_error = str(why) if isinstance(
                why, exception.ChecksumError) else '%s blocks %s: %s' % (
                    where, left, why)
            LOG.error('Scrub: %s blocks %s NOT REPAIRED: %s', where, left,
                      why)
        else:
            LOG.warning('Scrub: %s blocks %d-%d repaired from a valid '
                        'replica', where, first, first + count - 1)

    def _scrub_quarantine(self, found):
        reason = ('scrub found %d bad blocks in one pass (more than '
                  'scrub_error_limit %d): the disk is failing'
                  % (found, self.scrub_error_limit))
        self.scrub.last_error = reason
        self.scrub.save(force=True)
        if self.disk.fail(reason):
            LOG.critical(
                'DATA DIRECTORY %s QUARANTINED: %s; this chunk server '
                'serves nothing from it from now on and the master '
                're-replicates its chunks from their other copies; '
                'replace or check the disk, then restart this chunk '
                'server', self.store.data_dir, reason)
            self._wake.set()


class LightScrubMixin:
    """The light scrub of :class:`ChunkServer` (see the module; it
    provides ``store``, ``authority``, ``disk``, ``id``, ``light``,
    ``light_scrub_interval``, ``_registered``, ``_peer``,
    ``_differences`` and ``_resync_here``)."""

    async def _light_scrub_task(self):
        await self._registered.wait()
        await asyncio.sleep(random.uniform(
            0, self.light_scrub_interval * JITTER))
        while self.disk.failure is None:
            started = time.monotonic()
            try:
                await self._light_pass()
            except Exception:  # noqa: BLE001 - keep the server alive
                LOG.exception('Light scrub failed; starting again')
            left = self.light_scrub_interval - (time.monotonic() - started)
            await asyncio.sleep(max(left, 1.0))

    async def _light_pass(self):
        keys = sorted((v, i) for v, i, _ in self.store.chunk_list())
        pace = self.light_scrub_interval * (1 - JITTER) / max(len(keys), 1)
        for key in keys:
            t = time.monotonic()
            await self._light_one(key)
            await asyncio.sleep(max(pace - (time.monotonic() - t), 0))
        self.light['passes'] += 1
        self.light['last_pass_ended'] = time.time()

    async def _light_one(self, key):
        """Compare the replicas of one chunk this server is the primary
        of; make them identical where they differ."""
        c = self.store.held(*key)
        if c is None or c.stale or c.joining or key in self._suspect:
            return
        try:
            await self.authority.confirm(*key)
            view = self.authority.current(*key)
            if view is None or view.replicas[0] != self.id or \
                    view.epoch != c.epoch or len(view.replicas) < 2:
                return
            self.light['chunks'] += 1
            differ = False
            for sid in view.replicas[1:]:
                if await self._differences(c, await self._peer(sid)):
                    differ = True
                    break
            if not differ:
                return
            # Compared again with the chunk held: a write in flight is
            # no difference.
            fixed = await self._resync_here(
                key, view, 'at the same epoch (found by the light scrub)')
        except exception.NotFound:
            return              # deleted meanwhile
        except (exception.UrsaError, OSError) as e:
            self.light['last_error'] = 'chunk %s/%d: %s' % (*key, e)
            LOG.warning('Light scrub of chunk %s/%d failed: %s', *key, e)
            return
        if fixed:
            self.light['differing_chunks'] += 1
            self.light['blocks_made_identical'] += fixed
            LOG.warning('Light scrub: chunk %s/%d had %d block(s) differing '
                        'between replicas at epoch %d; made identical',
                        *key, fixed, view.epoch)

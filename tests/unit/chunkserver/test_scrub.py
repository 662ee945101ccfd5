"""The deep scrub's pace on a fake clock: a pass fits its interval, goes
faster while the server is idle, waits for clients while it is ahead of
its schedule and keeps the schedule under full client load; and the
check of one step of blocks, which finds rotten blocks and reads no
holes."""

import asyncio
import os
import struct

from cinder_ursa.chunkserver import scrub
from cinder_ursa.chunkserver import throttle
from cinder_ursa.chunkserver.store import mending
from cinder_ursa.common import checksum
from cinder_ursa.protocol.chunkfile import DATA

MiB = 1024 * 1024
STEP = scrub.UNIT_BLOCKS * 4096


class Clock:
    """A fake monotonic clock; ``load``: clients send a request every
    time the scrub sleeps (a server under full client load)."""

    def __init__(self):
        self.now = 1000.0
        self.load = None
        self.throttle = None

    def __call__(self):
        return self.now

    async def sleep(self, s):
        self.now += s
        if self.load is not None and self.load(self.now):
            self.throttle.client_ops += 1


def _pacer(clock):
    t = throttle.Throttle(clock=clock, sleep=clock.sleep)
    clock.throttle = t
    return scrub.Pacer(t, clock=clock, sleep=clock.sleep)


def _scrub(pacer, clock, total, load=None):
    """Scrub ``total`` bytes in steps; the seconds it took."""
    clock.load = load

    async def run():
        for _ in range(total // STEP):
            if load is not None and load(clock.now):
                clock.throttle.client_ops += 1
            await pacer.take(STEP)
    start = clock.now
    asyncio.run(run())
    return clock.now - start


def test_an_idle_pass_fits_its_interval_with_time_to_spare():
    clock = Clock()
    p = _pacer(clock)
    p.begin(1024 * MiB, 0, 1000.0)
    took = _scrub(p, clock, 1024 * MiB)
    # At 1.25 times the rate that fits: 800 s of the 1000.
    assert 780 < took < 820, took
    assert p.paused == 0


def test_under_full_client_load_the_pass_keeps_its_schedule():
    clock = Clock()
    p = _pacer(clock)
    p.begin(1024 * MiB, 0, 1000.0)
    took = _scrub(p, clock, 1024 * MiB, load=lambda now: True)
    # Never ahead for long: it waits for clients, and ends on time.
    assert 990 < took < 1010, took
    assert p.paused > 0


def test_it_waits_for_clients_while_ahead_and_catches_up_when_idle():
    clock = Clock()
    p = _pacer(clock)
    p.begin(1024 * MiB, 0, 1000.0)
    start = clock.now
    # Idle for the first 400 s: it gets ahead (1.25x).
    _scrub(p, clock, 512 * MiB)
    idle = clock.now - start
    assert 390 < idle < 410, idle
    # Clients from then on until 700 s: it is ahead, so it waits...
    busy_until = start + 700

    async def step():
        clock.throttle.client_ops += 1
        await p.take(STEP)
    clock.load = lambda now: now < busy_until
    done_before = p.done
    asyncio.run(step())
    assert clock.now - start >= 500 - 1, 'no wait while ahead under load'
    assert p.done == done_before + STEP
    # ...and the rest still ends within the interval.
    _scrub(p, clock, 512 * MiB - STEP, load=lambda now: now < busy_until)
    assert clock.now - start <= 1001, clock.now - start


def test_a_pass_resumed_after_a_restart_spreads_what_is_left():
    clock = Clock()
    p = _pacer(clock)
    # Half done, 100 s left: the rest at 1.25 x (512 MiB / 100 s).
    p.begin(1024 * MiB, 512 * MiB, 100.0)
    took = _scrub(p, clock, 512 * MiB)
    assert 75 < took < 85, took
    assert p.eta() == 0


def test_an_overdue_pass_is_not_a_storm():
    clock = Clock()
    p = _pacer(clock)
    p.begin(1024 * MiB, 0, 1000.0)
    clock.now += 2000                    # far past its due time
    # The time left counts as a twentieth of the pass at least.
    assert p.rate() == 1024 * MiB / 50.0


def _files(tmp_path, blocks):
    """A head's files holding ``blocks`` (None: a hole)."""
    data = open(tmp_path / 'x.data', 'w+b')
    meta = open(tmp_path / 'x.meta', 'w+b')
    for i, b in enumerate(blocks):
        if b is None:
            meta.write(bytes(8))
            continue
        data.seek(i * 4096)
        data.write(b)
        meta.write(struct.pack('!II', checksum.crc(b), DATA))
    data.flush()
    meta.flush()
    return data, meta


def test_a_step_finds_the_rotten_blocks_and_counts_what_it_read(tmp_path):
    good = b'g' * 4096
    data, meta = _files(tmp_path, [good, None, good, good])
    data.seek(2 * 4096 + 17)
    data.write(b'X')                   # bit rot in block 2
    data.flush()
    bad, nbytes = mending.check_unit(data.fileno(), meta.fileno(), 0, 4)
    assert bad == [2]
    assert nbytes == 3 * 4096           # the hole is not data
    assert mending.check_unit(data.fileno(), meta.fileno(), 3, 1) == (
        [], 4096)


def test_runs_of_neighbouring_blocks():
    assert scrub._runs([1, 2, 3, 7, 9, 10]) == [(1, 3), (7, 1), (9, 2)]
    assert scrub._runs([]) == []


def test_the_cursor_survives_a_restart(tmp_path):
    path = os.path.join(str(tmp_path), scrub.CURSOR)
    st = scrub.ScrubState(path)
    st.new_pass(100.0)
    st.position = ('vol', 3, 0, 128)
    st.bytes_done, st.found, st.repaired = 5 * MiB, 2, 1
    st.save(force=True)
    again = scrub.ScrubState(path)
    assert again.position == ('vol', 3, 0, 128)
    assert (again.bytes_done, again.found, again.repaired) == (5 * MiB, 2, 1)
    assert not again.pass_ended()
    with open(path, 'w') as f:
        f.write('{not json')
    assert scrub.ScrubState(path).position is None   # a new pass


class _Copy:
    def __init__(self, stale=False, joining=False):
        self.volume, self.index = 'vol', 1
        self.stale, self.joining = stale, joining


class _Server(scrub.ScrubMixin):
    """What _scrubbable looks at: the disk, the suspects, the store."""

    def __init__(self, unverified=False, suspect=(), failure=None):
        self.disk = type('Disk', (), {'failure': failure})()
        self._suspect = set(suspect)
        self.store = type('Store', (), {
            'unverified': staticmethod(lambda c: unverified)})()


def test_copies_being_brought_up_to_date_are_skipped():
    assert _Server()._scrubbable(_Copy())
    assert not _Server()._scrubbable(None)
    assert not _Server()._scrubbable(_Copy(stale=True))
    assert not _Server()._scrubbable(_Copy(joining=True))
    assert not _Server(unverified=True)._scrubbable(_Copy())
    assert not _Server(suspect={('vol', 1)})._scrubbable(_Copy())
    assert not _Server(failure='dead')._scrubbable(_Copy())

"""A chunk server takes a master term newer than it knows only once the
masters confirm it (ChunkServer._judge_term): any holder of the cluster
key can send TERM, and a huge term taken on its word alone deposed the
real leader on every chunk server for good."""

import asyncio

import pytest

from cinder_ursa import exception
from cinder_ursa.chunkserver import server as server_mod
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import control


class _Store:
    def __init__(self, term):
        self.master_term = term

    def adopt_master_term(self, term):
        self.master_term = max(self.master_term, term)

    def check_master_term(self, term):
        if term < self.master_term:
            raise exception.NotLeader(reason='its term %d is over' % term)


class _Conn:
    peer = 'test'

    def __init__(self):
        self.master_term = None
        self.claiming = False
        self.ticket = None
        self.closed = False
        self.sent = []
        self.tasks = set()

    def send(self, buffers):
        self.sent.append(bytes(buffers))

    def spawn(self, coro):
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        return task

    def replies(self):
        """The reply bodies sent, oldest first."""
        return [b[codec.HEADER.size:] for b in self.sent]


class _Masters:
    def __init__(self, urls):
        self.urls = urls


class _Server(server_mod.ChunkServer):
    """The term judging of a chunk server; its heartbeat is answered by
    the leader (http://leader) with ``leader_term`` after ``delay``
    seconds; ``frozen`` masters never answer, standbys say NotLeader."""

    def __init__(self, known, leader_term, delay=0.05, frozen=(),
                 standbys=()):
        self.store = _Store(known)
        self.leader_term = leader_term
        self.delay = delay
        self.frozen = frozen
        self.beats = 0
        self.id = 1
        self.key = b'k' * 32
        self.master = _Masters(list(frozen) + list(standbys) +
                               ['http://leader'])
        self._loop = asyncio.get_running_loop()
        self._term_asking = None
        self._term_asked = float('-inf')
        self._term_ask_sent = float('-inf')
        self._claims_refused = 0
        self._claims_warned = float('-inf')
        self._term_clients = {}
        self._heartbeat_interval = 1.0
        self._master_lease = float('-inf')

    async def _heartbeat(self, master=None):
        url = master.urls[0]
        if url in self.frozen:
            await asyncio.sleep(3600)
        if url != 'http://leader':
            raise exception.NotLeader(reason='the leader is elsewhere')
        self.beats += 1
        term = self.leader_term  # as the leader answers when asked
        await asyncio.sleep(self.delay)
        reply = {'ok': True, 'term': term}
        self._learn_term(reply)
        return reply


def _frame(encode, *args):
    raw = encode(1, *args)
    opcode, flags, req_id, _ = codec.parse_header(raw)
    return codec.Frame(opcode, flags, req_id,
                       memoryview(raw)[codec.HEADER.size:])


async def _claim(server, conn, term):
    server._judge_term(conn, _frame(control.encode_term, term))
    await asyncio.gather(*conn.tasks)
    return conn.replies()[-1]


def _run(coro):
    return asyncio.run(coro)


def test_a_forged_term_is_refused_and_not_taken():
    async def scenario():
        s = _Server(known=7, leader_term=7)
        conn = _Conn()
        body = await _claim(s, conn, control.MAX_TERM)
        with pytest.raises(exception.Unavailable,
                           match='not confirmed by the masters'):
            control.decode_count_ok(body)
        assert s.store.master_term == 7
        assert conn.master_term is None and not conn.claiming
        # The leader's own claim is still taken at once (no heartbeat).
        leader = _Conn()
        assert control.decode_count_ok(await _claim(s, leader, 7)) == 7
        assert leader.master_term == 7 and s.beats == 1
    _run(scenario())


def test_a_new_leaders_term_is_taken_once_the_masters_confirm_it():
    async def scenario():
        s = _Server(known=7, leader_term=8)
        old, new = _Conn(), _Conn()
        assert control.decode_count_ok(await _claim(s, old, 7)) == 7
        assert control.decode_count_ok(await _claim(s, new, 8)) == 8
        assert s.store.master_term == 8 and new.master_term == 8
        assert s.beats == 1
        # The deposed master learns the newer term from its own claim.
        assert control.decode_count_ok(await _claim(s, old, 7)) == 8
        # A claim above what the leader holds is still refused.
        with pytest.raises(exception.Unavailable):
            control.decode_count_ok(await _claim(s, _Conn(), 9))
    _run(scenario())


def test_a_flood_of_claims_costs_the_masters_one_heartbeat(caplog):
    """...and the log one warning (it was one per claim)."""
    async def scenario():
        s = _Server(known=7, leader_term=7)
        s.TERM_ASK_INTERVAL = 0.3
        conns = [_Conn() for _ in range(200)]
        for i, c in enumerate(conns):
            s._judge_term(c, _frame(control.encode_term, 100 + i))
        assert all(c.claiming for c in conns)
        await asyncio.gather(*(t for c in conns for t in c.tasks))
        assert s.beats == 1
        # Within TERM_ASK_INTERVAL of that heartbeat, another claim
        # waits for the interval to end: one more heartbeat, no sooner.
        loop = asyncio.get_running_loop()
        start = loop.time()
        late = _Conn()
        with pytest.raises(exception.Unavailable):
            control.decode_count_ok(await _claim(s, late, 1000))
        assert s.beats == 2
        assert loop.time() - start >= s.TERM_ASK_INTERVAL - 0.1
        for c in conns:
            with pytest.raises(exception.Unavailable):
                control.decode_count_ok(c.replies()[-1])
        assert s.store.master_term == 7
        warned = [r for r in caplog.records if 'claims term' in
                  r.getMessage() and r.levelname == 'WARNING']
        assert len(warned) == 1
    _run(scenario())


def test_requests_behind_an_unconfirmed_claim_are_refused():
    async def scenario():
        s = _Server(known=7, leader_term=7, delay=0.2)
        s.disk = type('Disk', (), {'failure': None})()
        conn = _Conn()
        s.handle(conn, _frame(control.encode_term, 50))
        assert conn.claiming
        s.handle(conn, _frame(control.encode_inventory))
        with pytest.raises(exception.Unavailable, match='not confirmed yet'):
            control.decode_count_ok(conn.replies()[0])
        await asyncio.gather(*conn.tasks)
        assert not conn.claiming
    _run(scenario())


def test_a_server_not_registered_yet_confirms_nothing():
    async def scenario():
        s = _Server(known=0, leader_term=5)
        s.id = None
        body = await _claim(s, _Conn(), 5)
        with pytest.raises(exception.Unavailable, match='not registered'):
            control.decode_count_ok(body)
        assert s.store.master_term == 0 and s.beats == 0
    _run(scenario())


def test_a_frozen_master_does_not_delay_the_confirmation():
    """The masters are asked at once, not in turn: a leader frozen
    (SIGSTOP) and replaced, first in the list, does not hold the new
    leader's claim for a client timeout."""
    async def scenario():
        s = _Server(known=7, leader_term=8, frozen=('http://old',),
                    standbys=('http://standby',))
        loop = asyncio.get_running_loop()
        start = loop.time()
        conn = _Conn()
        assert control.decode_count_ok(await _claim(s, conn, 8)) == 8
        assert loop.time() - start < 1.0
        assert s.store.master_term == 8
    _run(scenario())


def test_no_leader_answering_confirms_nothing():
    async def scenario():
        s = _Server(known=7, leader_term=8, frozen=('http://a',))
        s.master.urls = ['http://a']
        s.TERM_ASK_TIMEOUT = 0.3
        with pytest.raises(exception.Unavailable,
                           match='no master answered within'):
            control.decode_count_ok(await _claim(s, _Conn(), 8))
        assert s.store.master_term == 7
    _run(scenario())


def test_a_forged_claim_does_not_get_the_new_leaders_claim_refused():
    """A forged claim made the chunk server ask the masters just before
    the election ended (its answer: the old term).  The new leader's
    claim that follows, within TERM_ASK_INTERVAL or while that heartbeat
    is under way, was judged by that stale answer and refused: a forger
    claiming every second got every TERM of a new leader refused until
    the chunk server's own heartbeat learnt the term.  It waits for a
    heartbeat sent after it arrived instead (still one a second)."""
    async def scenario():
        loop = asyncio.get_running_loop()
        s = _Server(known=7, leader_term=7, delay=0.2)
        s.TERM_ASK_INTERVAL = 0.5
        forged = _Conn()
        s._judge_term(forged, _frame(control.encode_term, control.MAX_TERM))
        await asyncio.sleep(0.1)   # its heartbeat under way
        s.leader_term = 8          # elected meanwhile
        start = loop.time()
        leader = _Conn()
        body = await _claim(s, leader, 8)
        assert control.decode_count_ok(body) == 8
        assert s.store.master_term == 8 and leader.master_term == 8
        assert loop.time() - start < 1.5
        assert s.beats == 2
        # Within the interval of that heartbeat: no stale refusal either.
        await asyncio.gather(*forged.tasks)
        with pytest.raises(exception.Unavailable):
            control.decode_count_ok(forged.replies()[-1])
        s.leader_term = 9
        again = _Conn()
        assert control.decode_count_ok(await _claim(s, again, 9)) == 9
        assert s.beats == 3
    _run(scenario())

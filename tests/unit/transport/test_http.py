"""The REST transports against the real master app on 127.0.0.1: signed
requests are accepted, quoted paths reach the right object, error
replies raise the master's exception, and both clients fail over from
masters that refuse or drop the connection to one that answers, go to the
leader a standby names and wait out an election."""

import asyncio
import json
import socket
import threading
import time

import pytest
from aiohttp import test_utils

from cinder_ursa import exception
from cinder_ursa.client import master as master_mod
from cinder_ursa.master import api
from cinder_ursa.master import models
from cinder_ursa.master import store as store_mod

KEY = b'k' * 32
# A name that needs quoting in a URL.  Names like it can no longer be
# given (master/store/common.py NAME_RE), but volumes and snapshots that
# got them before still work: legacy() makes one as an upgrade finds it.
NAME = 'a b?c#d%41'


def legacy(servers, table, ident, name):
    """Give the volume or snapshot ``ident`` a name made before names
    were restricted."""
    t = getattr(models, table)
    with servers.store.engine.begin() as conn:
        conn.execute(t.update().where(t.c.id == ident).values(name=name))


class Servers:
    """On a loop thread: the real master REST app, a port nobody listens
    on, one that closes every connection at once, and one that never
    answers."""

    def __init__(self, db):
        self.store = store_mod.MetadataStore('sqlite:///%s' % db)
        self.store.upgrade()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever,
                                       daemon=True)
        self.thread.start()
        self._run(self._start())
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            self.refused = 'http://127.0.0.1:%d' % s.getsockname()[1]

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _start(self):
        self.server = test_utils.TestServer(
            api.MasterAPI(self.store, KEY).app(), host='127.0.0.1')
        await self.server.start_server()
        self.master = str(self.server.make_url('')).rstrip('/')
        self.dropped = await self._tcp(lambda r, w: w.close())
        self._hung = []

        async def hang(r, w):
            self._hung.append(w)
        self.silent = await self._tcp(hang)
        self.standby = await self._tcp(self._not_leader(self.master))
        self.electing = await self._tcp(self._not_leader(None))

    @staticmethod
    def _not_leader(leader):
        """A standby master: HTTP 503 not_leader naming ``leader``."""
        err = {'code': 'not_leader', 'message': 'This master is not the '
               'leader: the leader is %s' % leader}
        if leader:
            err['leader'] = leader
        body = json.dumps({'error': err}).encode()

        async def answer(r, w):
            await r.readuntil(b'\r\n\r\n')
            w.write(b'HTTP/1.1 503 Service Unavailable\r\n'
                    b'Content-Type: application/json\r\n'
                    b'Content-Length: %d\r\nConnection: close\r\n\r\n'
                    % len(body) + body)
            await w.drain()
            w.close()
        return answer

    async def _tcp(self, handler):
        srv = await asyncio.start_server(handler, '127.0.0.1', 0)
        self._tcp_servers = getattr(self, '_tcp_servers', []) + [srv]
        return 'http://127.0.0.1:%d' % srv.sockets[0].getsockname()[1]

    async def _stop(self):
        for w in self._hung:
            w.close()
        for srv in self._tcp_servers:
            srv.close()
        await self.server.close()

    def close(self):
        self._run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.store.close()


@pytest.fixture
def servers(tmp_path):
    s = Servers(tmp_path / 'm.sqlite')
    yield s
    s.close()


def test_blocking_client_fails_over_and_speaks_the_api(servers):
    c = master_mod.MasterClient(
        [servers.refused, servers.dropped + '/', servers.master], KEY,
        timeout=5)
    vol = c.create_volume('plain', 1 << 20, replicas=1)
    assert c.urls == [servers.master, servers.refused, servers.dropped]
    legacy(servers, 'volumes', vol['id'], NAME)
    assert c.volume(NAME)['id'] == vol['id']
    assert c.volume(vol['id'])['name'] == NAME
    assert [v['name'] for v in c.volumes()] == [NAME]
    snap = c.create_snapshot(NAME, 's1')
    legacy(servers, 'snapshots', snap['id'], 's 1')
    assert c.snapshot('%s@s 1' % NAME)['id'] == snap['id']
    assert c.chunk_map(vol['id'], 0, 1)['volume']['id'] == vol['id']
    with pytest.raises(exception.NotFound):
        c.volume('nothing here')
    with pytest.raises(exception.InvalidArgument, match='A-Z a-z 0-9'):
        c.create_volume(NAME, 1 << 20, replicas=1)
    c.create_volume('other', 1 << 20, replicas=1)
    with pytest.raises(exception.AlreadyExists):
        c.create_volume('other', 1 << 20, replicas=1)
    c.delete_volume('other')
    c.delete_snapshot(snap['id'])
    c.delete_volume(NAME)
    assert c.volumes() == []


def test_a_create_retried_after_a_lost_try_is_its_own(servers):
    """A create whose first try was lost (the master died or dropped
    the connection before answering: it may have been applied) and whose
    retry on another master says AlreadyExists gets the volume, when it
    is the one asked for; not when it differs, nor when the first try
    was refused (never sent)."""
    master_mod.MasterClient(servers.master, KEY).create_volume(
        'applied', 1 << 20, replicas=1)
    c = master_mod.MasterClient([servers.dropped, servers.master], KEY,
                                timeout=5)
    assert c.create_volume('applied', 1 << 20, replicas=1)['name'] == \
        'applied'
    c = master_mod.MasterClient([servers.dropped, servers.master], KEY,
                                timeout=5)
    with pytest.raises(exception.AlreadyExists):
        c.create_volume('applied', 2 << 20, replicas=1)
    c = master_mod.MasterClient([servers.refused, servers.master], KEY,
                                timeout=5)
    with pytest.raises(exception.AlreadyExists):
        c.create_volume('applied', 1 << 20, replicas=1)

    async def go():
        a = master_mod.AsyncMasterClient(
            [servers.dropped, servers.master], KEY, timeout=5)
        try:
            assert (await a.create_volume('applied', 1 << 20,
                                          replicas=1))['name'] == 'applied'
        finally:
            await a.close()
        a = master_mod.AsyncMasterClient(
            [servers.refused, servers.master], KEY, timeout=5)
        try:
            with pytest.raises(exception.AlreadyExists):
                await a.create_volume('applied', 1 << 20, replicas=1)
        finally:
            await a.close()
    asyncio.run(go())


def test_blocking_client_errors(servers):
    with pytest.raises(exception.NotAuthorized):
        master_mod.MasterClient(servers.master, b'x' * 32).volumes()
    c = master_mod.MasterClient([servers.refused, servers.dropped], KEY)
    with pytest.raises(exception.UrsaConnectionError,
                       match='is ursa-master running there'):
        c.volumes()
    c = master_mod.MasterClient([servers.silent], KEY, timeout=0.3)
    with pytest.raises(exception.UrsaConnectionError):
        c.volumes()
    with pytest.raises(exception.InvalidArgument):
        master_mod.MasterClient(['', None], KEY)


def test_async_client_fails_over_and_speaks_the_api(servers):
    async def go():
        c = master_mod.AsyncMasterClient(
            [servers.refused, servers.dropped, servers.master], KEY,
            timeout=5)
        try:
            blocking = master_mod.MasterClient(servers.master, KEY)
            vol = blocking.create_volume('plain', 1 << 20, replicas=1)
            legacy(servers, 'volumes', vol['id'], NAME)
            assert (await c.volume(NAME))['id'] == vol['id']
            assert c.urls[0] == servers.master
            lease = await c.acquire_lease(vol['id'], 'me', ttl=10)
            again = await c.renew_lease(vol['id'], 'me',
                                        lease['generation'], 10)
            assert again['generation'] == lease['generation']
            await c.release_lease(vol['id'], 'me', lease['generation'])
            await c.create_snapshot(NAME, 's')
            await c.delete_snapshot(NAME + '@s')
            with pytest.raises(exception.NotFound):
                await c.snapshot(NAME + '@s')
        finally:
            await c.close()
        c = master_mod.AsyncMasterClient([servers.refused, servers.dropped],
                                         KEY)
        try:
            with pytest.raises(exception.UrsaConnectionError):
                await c.servers()
        finally:
            await c.close()
        c = master_mod.AsyncMasterClient([servers.silent], KEY, timeout=0.3)
        try:
            with pytest.raises(exception.UrsaConnectionError):
                await c.servers()
        finally:
            await c.close()
    asyncio.run(go())


def test_blocking_client_follows_the_leader_a_standby_names(servers):
    # Only the standby is given: it names the leader, which is tried next
    # and kept first.
    c = master_mod.MasterClient([servers.standby], KEY, timeout=5)
    assert c.volumes() == []
    assert c.urls == [servers.master, servers.standby]


def test_clients_wait_out_an_election_then_give_up(servers):
    c = master_mod.MasterClient([servers.refused, servers.electing], KEY,
                                timeout=5)
    c._http.failover_wait = 0.6
    start = time.monotonic()
    with pytest.raises(exception.NotLeader, match='the leader is None'):
        c.volumes()
    assert 0.6 <= time.monotonic() - start < 3

    async def go():
        a = master_mod.AsyncMasterClient([servers.electing, servers.standby],
                                         KEY, timeout=5)
        try:
            assert await a.servers() == []
            assert a.urls[0] == servers.master
        finally:
            await a.close()
    asyncio.run(go())

"""HTTP transports of the master's REST API: a blocking one and an asyncio
one.

Both send a :class:`cinder_ursa.protocol.rest.Request` signed with the
cluster key (``common.auth``), try the master URLs in order, move the
first URL that answers to the front, and turn an error reply into the
exception the master raised.  :class:`_Masters` holds that policy once;
the two classes only do the I/O.

Several masters: a standby answers NotLeader (HTTP 503) naming the
leader; the transport tries the leader next (adding its URL if it was not
given).  While the masters answer only NotLeader (an election is under
way, after the leader died), it tries them all again every
``FAILOVER_POLL`` seconds for up to ``failover_wait`` seconds.

:class:`BlockingHttp` uses only the standard library's sockets (urllib),
so it works unchanged in a process eventlet has monkey-patched.
:class:`AsyncHttp` uses aiohttp; create and use it inside one loop.
"""

import asyncio
import json
import time
import urllib.error
import urllib.parse
import urllib.request

from cinder_ursa import exception
from cinder_ursa.common import auth
from cinder_ursa.protocol import rest

# Seconds clients wait for a new leader while the masters answer only
# NotLeader: a dead leader's lease ([ursa_master] leader_lease, 8 s by
# default) and the election round, with room for a longer lease.  The
# masters are asked again every FAILOVER_POLL seconds: a client calls the
# new leader at most that long after it is elected (a refused connection
# or a 503 costs next to nothing to try).
FAILOVER_WAIT = 30.0
FAILOVER_POLL = 0.25


class _Masters:
    """The master URLs in failover order and the key that signs."""

    def __init__(self, urls, key, timeout, failover_wait=FAILOVER_WAIT):
        if isinstance(urls, str):
            urls = [urls]
        self.urls = [u.rstrip('/') for u in urls if u]
        if not self.urls:
            raise exception.InvalidArgument(reason='no master URL given')
        self.key = key
        self.timeout = timeout
        self.failover_wait = failover_wait

    def attempts(self, req):
        """(index, base URL, full URL, headers) for each master in order;
        the signature covers the path without the query."""
        path = rest.PREFIX + req.path
        full = path
        if req.params:
            full += '?' + urllib.parse.urlencode(req.params)
        for i, base in enumerate(list(self.urls)):
            yield i, base, base + full, {
                auth.HEADER: auth.sign(self.key, req.method, path)}

    def answer(self, base, status, text, req):
        """The reply of master ``base``: raise the master's error, or put
        that master first for next time and return the wanted field.  A
        standby's NotLeader puts the leader it names first."""
        if status >= 400:
            exc = rest.error_from_body(status, text)
            leader = getattr(exc, 'leader', None)
            if isinstance(exc, exception.NotLeader) and leader:
                leader = leader.rstrip('/')
                if leader in self.urls:
                    self.urls.remove(leader)
                self.urls.insert(0, leader)
            raise exc
        if base in self.urls and self.urls[0] != base:
            self.urls.remove(base)
            self.urls.insert(0, base)
        reply = json.loads(text) if text else {}
        return reply if req.result is None else reply[req.result]

    def demote(self, failed):
        """Masters that could not be reached in a round go last for the
        next: the standby that named a dead or frozen leader may lead
        by then."""
        for base in failed:
            if base in self.urls:
                self.urls.remove(base)
                self.urls.append(base)

    def rounds(self):
        """The deadline of the rounds over all masters, which go on while
        masters answer only NotLeader."""
        return time.monotonic() + self.failover_wait


class BlockingHttp(_Masters):
    """urllib transport (CLI, Cinder driver, nova_ha)."""

    def send(self, req):
        data = json.dumps(req.body).encode() if req.body is not None \
            else None
        deadline = None
        while True:
            done, result, electing = self._round(req, data)
            if done:
                return result
            if not electing:
                raise result
            deadline = deadline or self.rounds()
            if time.monotonic() >= deadline:
                raise result
            time.sleep(FAILOVER_POLL)

    def _round(self, req, data):
        """One try of every master: (True, the answer, _) or (False, a
        master's NotLeader if one said so else the last error, whether one
        said so)."""
        last, electing, failed = None, None, []
        for _, base, url, headers in self.attempts(req):
            r = urllib.request.Request(url, data=data, method=req.method,
                                       headers=headers)
            if data is not None:
                r.add_header('Content-Type', 'application/json')
            try:
                with urllib.request.urlopen(r, timeout=self.timeout) as resp:
                    status, text = resp.status, resp.read().decode()
            except urllib.error.HTTPError as e:
                status, text = e.code, e.read().decode('utf-8', 'replace')
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, 'reason', e)
                last = exception.UrsaConnectionError(
                    peer=base, reason='%s; is ursa-master running there?'
                    % reason)
                failed.append(base)
                continue
            try:
                return True, self.answer(base, status, text, req), False
            except exception.NotLeader as e:
                electing = e
        self.demote(failed)
        # While a master says NotLeader, that is the error to report.
        return False, electing or last, electing is not None


class AsyncHttp(_Masters):
    """aiohttp transport (chunk servers, client library)."""

    def __init__(self, urls, key, timeout, failover_wait=FAILOVER_WAIT):
        super().__init__(urls, key, timeout, failover_wait)
        import aiohttp
        self._aiohttp = aiohttp
        self._session = None

    def _sess(self):
        if self._session is None or self._session.closed:
            self._session = self._aiohttp.ClientSession(
                timeout=self._aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def send(self, req):
        deadline = None
        while True:
            done, result, electing = await self._round(req)
            if done:
                return result
            if not electing:
                raise result
            deadline = deadline or self.rounds()
            if time.monotonic() >= deadline:
                raise result
            await asyncio.sleep(FAILOVER_POLL)

    async def _round(self, req):
        sess = self._sess()
        last, electing, failed = None, None, []
        for _, base, url, headers in self.attempts(req):
            try:
                async with sess.request(req.method, url, json=req.body,
                                        headers=headers) as resp:
                    status, text = resp.status, await resp.text()
            except (self._aiohttp.ClientConnectionError, OSError) as e:
                last = exception.UrsaConnectionError(
                    peer=base, reason=str(e) or type(e).__name__)
                failed.append(base)
                continue
            except TimeoutError:
                last = exception.UrsaTimeout(peer=base, seconds=self.timeout)
                failed.append(base)
                continue
            try:
                return True, self.answer(base, status, text, req), False
            except exception.NotLeader as e:
                electing = e
        self.demote(failed)
        # While a master says NotLeader, that is the error to report.
        return False, electing or last, electing is not None

    async def close(self):
        if self._session is not None:
            await self._session.close()
            self._session = None

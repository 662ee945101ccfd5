"""HTTP transports of the master's REST API: a blocking one and an asyncio
one.

Both send a :class:`cinder_ursa.protocol.rest.Request` signed with the
cluster key (``common.auth``), try the master URLs in order, move the
first URL that answers to the front, and turn an error reply into the
exception the master raised.  :class:`_Masters` holds that policy once;
the two classes only do the I/O.

Every attempt is signed anew (``auth.sign``: a fresh nonce, the exact
path, query and body bytes, and the ``host:port`` of the master it goes
to), since a master accepts a signature once and only if it was signed
for it.  The signer is a principal (name, key): the one given, else the
one :func:`set_default_principal` set for the process (``[ursa]
principal`` and ``principal_key_file``), else ``admin`` with the cluster
key the client was built with.
``https://`` master URLs are verified against ``tls`` (an
``ssl.SSLContext``, see :func:`client_tls`), by default the one
:func:`set_default_tls` set for the process from ``[ursa] tls_ca_file``,
``tls_cert_file`` and ``tls_key_file``.

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
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request

from cinder_ursa import exception
from cinder_ursa.common import auth
from cinder_ursa.protocol import rest
from cinder_ursa.transport import aio

# Seconds clients wait for a new leader while the masters answer only
# NotLeader: a dead leader's lease ([ursa_master] leader_lease, 8 s by
# default) and the election round, with room for a longer lease.  The
# masters are asked again every FAILOVER_POLL seconds: a client calls the
# new leader at most that long after it is elected (a refused connection
# or a 503 costs next to nothing to try).
FAILOVER_WAIT = 30.0
FAILOVER_POLL = 0.25

# The TLS context of clients built without one (set_default_tls).
_default_tls = None
# The (name, key) clients built without a principal sign as
# (set_default_principal); None: admin, with the client's cluster key.
_default_principal = None


def client_tls(ca_file=None, cert_file=None, key_file=None):
    """An ``ssl.SSLContext`` for ``https://`` master URLs: it verifies the
    master's certificate against ``ca_file`` (a PEM CA bundle; the
    system's CAs if None) and its host name, and presents ``cert_file``
    (with ``key_file``, or the key in ``cert_file``) to a master that
    asks for client certificates.  None when nothing is set: the
    defaults of urllib and aiohttp (the system's CAs) apply."""
    if not (ca_file or cert_file):
        return None
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
        if cert_file:
            ctx.load_cert_chain(cert_file, key_file or None)
    except (OSError, ssl.SSLError, ValueError) as e:
        raise exception.InvalidArgument(
            reason='cannot load the TLS files for the master connection '
                   '(CA %s, certificate %s, key %s): %s; check [ursa] '
                   'tls_ca_file, tls_cert_file and tls_key_file'
            % (ca_file, cert_file, key_file, e)) from e
    return ctx


def set_default_tls(ctx):
    """Make ``ctx`` the TLS context of the clients of this process that
    are given none (every daemon and the CLI set it from their [ursa]
    options at start)."""
    global _default_tls
    _default_tls = ctx


def configure_tls(conf):
    """:func:`set_default_tls` from the ``[ursa]`` options of ``conf``,
    and the data protocol's (``data_tls``: the chunk servers verified
    with the same CAs, the same client certificate presented)."""
    u = conf.ursa
    set_default_tls(client_tls(u.tls_ca_file, u.tls_cert_file,
                               u.tls_key_file))
    aio.set_data_tls(data_tls(u.tls_ca_file, u.tls_cert_file,
                              u.tls_key_file) if u.data_tls else None)


def data_tls(ca_file=None, cert_file=None, key_file=None):
    """The client TLS context of data connections: the chunk server's
    certificate verified against ``ca_file`` (the system's CAs if None)
    and the address connected to; ``cert_file`` presented to a chunk
    server that asks for client certificates."""
    return client_tls(ca_file, cert_file, key_file) or \
        ssl.create_default_context()


def set_default_principal(principal):
    """Make ``principal`` ((name, key), or None for admin with the
    cluster key) the signer of the clients of this process that are
    given none."""
    global _default_principal
    _default_principal = principal


def default_principal():
    """The (name, key) :func:`set_default_principal` set, or None."""
    return _default_principal


def principal_from(name, key_file):
    """(name, key) of the principal ``name`` with the key in
    ``key_file``; None for ``admin`` (the cluster key signs).
    InvalidArgument naming the options at fault."""
    if not name or name == auth.ADMIN:
        return None
    if not auth.valid_principal(name):
        raise exception.InvalidArgument(
            reason='principal %r is no principal name (1 to %d letters, '
                   'digits, ".", "-" or "_")' % (name, auth.PRINCIPAL_MAX))
    if not key_file:
        raise exception.InvalidArgument(
            reason='principal %r needs its key file: set principal_key_file '
                   'to the file "ursa key create %s" wrote' % (name, name))
    return name, auth.load_key(key_file, what='key of principal %s' % name)


def configure_principal(conf):
    """:func:`set_default_principal` from the ``[ursa]`` options
    ``principal`` and ``principal_key_file`` of ``conf``."""
    u = conf.ursa
    set_default_principal(principal_from(u.principal, u.principal_key_file))


class _Masters:
    """The master URLs in failover order and who signs."""

    def __init__(self, urls, key, timeout, failover_wait=FAILOVER_WAIT,
                 tls=None, principal=None):
        if isinstance(urls, str):
            urls = [urls]
        self.urls = [u.rstrip('/') for u in urls if u]
        if not self.urls:
            raise exception.InvalidArgument(reason='no master URL given')
        self.key = key
        self.timeout = timeout
        self.failover_wait = failover_wait
        self._tls = tls
        self._principal = principal

    @property
    def principal(self):
        """(name, key) that signs: the one given, the process default,
        or admin with the cluster key."""
        return self._principal or _default_principal or (auth.ADMIN,
                                                         self.key)

    @property
    def tls(self):
        """The TLS context of https:// URLs (None: the library's
        default)."""
        return self._tls if self._tls is not None else _default_tls

    @staticmethod
    def body(req):
        """The exact bytes of ``req``'s body (None without one): what
        is sent is what is signed.  Compact (no spaces): a chunk
        server's registration lists millions of numbers."""
        return json.dumps(req.body, separators=(',', ':')).encode() \
            if req.body is not None else None

    def attempts(self, req, data):
        """(index, base URL, full URL, headers) for each master in order,
        each signed anew over the method, the path, the query and the
        body bytes ``data``."""
        path = rest.PREFIX + req.path
        query = urllib.parse.urlencode(req.params) if req.params else ''
        full = path + ('?' + query if query else '')
        name, key = self.principal
        for i, base in enumerate(list(self.urls)):
            headers = {auth.HEADER: auth.sign(
                key, req.method, path, query, data or b'', principal=name,
                authority=auth.authority(base))}
            if data is not None:
                headers['Content-Type'] = 'application/json'
            yield i, base, base + full, headers

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


def _mark_retried(err, tried):
    """An error answered after an earlier try of the same request was
    lost (the master died or the connection broke before its answer):
    that try may have been applied, and ``err.after_lost_try`` says so
    (a create answered AlreadyExists may be the caller's own)."""
    err.after_lost_try = bool(tried.get('lost'))


class BlockingHttp(_Masters):
    """urllib transport (CLI, Cinder driver, nova_ha)."""

    def send(self, req):
        data = self.body(req)
        deadline = None
        tried = {}
        while True:
            done, result, electing = self._round(req, data, tried)
            if done:
                return result
            if not electing:
                raise result
            deadline = deadline or self.rounds()
            if time.monotonic() >= deadline:
                raise result
            time.sleep(FAILOVER_POLL)

    def _round(self, req, data, tried):
        """One try of every master: (True, the answer, _) or (False, a
        master's NotLeader if one said so else the last error, whether one
        said so)."""
        last, electing, failed = None, None, []
        for _, base, url, headers in self.attempts(req, data):
            r = urllib.request.Request(url, data=data, method=req.method,
                                       headers=headers)
            try:
                with urllib.request.urlopen(r, timeout=max(
                        self.timeout, req.timeout or 0),
                                            context=self.tls) as resp:
                    status, text = resp.status, resp.read().decode()
            except urllib.error.HTTPError as e:
                status, text = e.code, e.read().decode('utf-8', 'replace')
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, 'reason', e)
                hint = ('check [ursa] tls_ca_file (the CA of the master\'s '
                        'certificate) and tls_cert_file'
                        if isinstance(reason, ssl.SSLError) else
                        'is ursa-master running there?')
                last = exception.UrsaConnectionError(
                    peer=base, reason='%s; %s' % (reason, hint))
                failed.append(base)
                # Refused: never sent.  Else it may have been applied.
                tried['lost'] = tried.get('lost') or not isinstance(
                    reason, ConnectionRefusedError)
                continue
            try:
                return True, self.answer(base, status, text, req), False
            except exception.NotLeader as e:
                electing = e
            except exception.UrsaError as e:
                _mark_retried(e, tried)
                raise
        self.demote(failed)
        # While a master says NotLeader, that is the error to report.
        return False, electing or last, electing is not None


class AsyncHttp(_Masters):
    """aiohttp transport (chunk servers, client library)."""

    def __init__(self, urls, key, timeout, failover_wait=FAILOVER_WAIT,
                 tls=None, principal=None):
        super().__init__(urls, key, timeout, failover_wait, tls, principal)
        import aiohttp
        import yarl
        self._aiohttp = aiohttp
        self._yarl = yarl
        self._session = None

    def _sess(self):
        if self._session is None or self._session.closed:
            self._session = self._aiohttp.ClientSession(
                timeout=self._aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def send(self, req):
        deadline = None
        tried = {}
        while True:
            done, result, electing = await self._round(req, tried)
            if done:
                return result
            if not electing:
                raise result
            deadline = deadline or self.rounds()
            if time.monotonic() >= deadline:
                raise result
            await asyncio.sleep(FAILOVER_POLL)

    async def _round(self, req, tried):
        sess = self._sess()
        data = self.body(req)
        tls = self.tls
        last, electing, failed = None, None, []
        for _, base, url, headers in self.attempts(req, data):
            # encoded=True: the path and query go out as signed, not
            # requoted by yarl.
            extra = {}
            if req.timeout is not None and req.timeout > self.timeout:
                extra['timeout'] = self._aiohttp.ClientTimeout(
                    total=req.timeout)
            try:
                async with sess.request(
                        req.method, self._yarl.URL(url, encoded=True),
                        data=data, headers=headers,
                        ssl=tls if tls is not None else True,
                        **extra) as resp:
                    status, text = resp.status, await resp.text()
            except (self._aiohttp.ClientConnectionError, OSError) as e:
                last = exception.UrsaConnectionError(
                    peer=base, reason=str(e) or type(e).__name__)
                failed.append(base)
                # Not connected: never sent.  Else it may have been applied.
                tried['lost'] = tried.get('lost') or not isinstance(
                    e, self._aiohttp.ClientConnectorError)
                continue
            except TimeoutError:
                last = exception.UrsaTimeout(peer=base, seconds=max(
                    self.timeout, req.timeout or 0))
                failed.append(base)
                tried['lost'] = True
                continue
            try:
                return True, self.answer(base, status, text, req), False
            except exception.NotLeader as e:
                electing = e
            except exception.UrsaError as e:
                _mark_retried(e, tried)
                raise
        self.demote(failed)
        # While a master says NotLeader, that is the error to report.
        return False, electing or last, electing is not None

    async def close(self):
        if self._session is not None:
            await self._session.close()
            self._session = None

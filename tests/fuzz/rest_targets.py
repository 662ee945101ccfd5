"""Fuzz targets of the master's REST API (``master/api.py``): a real
``MasterAPI`` over a SQLite store, served on loopback from a thread of
its own, sent raw HTTP requests for every route the application has.

The promises: a signed request, whatever its path segments, query and
body, never gets a 500 (only ``InsufficientReplicas``, ``Unavailable``
and ``NoSpace`` may be 5xx: 503 and 507) and every error is the
project's JSON error body; an unsigned or badly signed request gets
401 with that body; no traceback is logged (one per request lets anyone
flood the log).
"""

import asyncio
import http.client
import inspect
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import urllib.parse

from aiohttp import web
from hypothesis import strategies as st

from cinder_ursa.common import auth
from cinder_ursa.common import units
from cinder_ursa.master import api
from cinder_ursa.master import store as store_mod
from tests.fuzz import mutate

KEY = b'f' * 32
# Records made before the fuzzing starts, so that paths naming them get
# past the lookups.
VOLUME, SNAPSHOT, HOST = 'x', 's', 'h'
SERVER_UUID = 'fuzz-server'
UNAUTHENTICATED = ('/', '/' + api.API_VERSION)
# 5xx a request may get without anything being wrong: the cluster is
# short of chunk servers (there are none) or of space.
EXPECTED_5XX = {503, 507}
# Statuses aiohttp answers itself, as text, for a path or method no
# route has, and for a body over client_max_size.
AIOHTTP_TEXT = {404, 405, 413}


def signed_headers(method, path, query='', body=b''):
    """The signature header of a request; ``path`` is the raw path (the
    percent-encoded one sent), without the query, ``query`` the raw query
    (without '?') and ``body`` the bytes sent.  The one place that knows
    how requests are signed: ``auth.sign``."""
    return {auth.HEADER: auth.sign(KEY, method, path, query, body)}


def _fields(source):
    """The body fields a piece of source reads (``_Body.get('name',
    kind, ...)``), so that a new field is fuzzed without a change here."""
    return sorted(set(re.findall(
        r"\.get\(\s*'(\w+)',\s*(?:int|str|bool|float|list|dict)\b",
        source)))


FIELDS = _fields(inspect.getsource(api))
QUERY_KEYS = ['start', 'count', 'allocate', 'holder', 'generation', 'host']

INTS = st.one_of(
    st.integers(-3, 5), st.integers(), st.sampled_from([
        2 ** 31, 2 ** 32, 2 ** 53, 2 ** 53 + 1, 2 ** 63 - 1, 2 ** 63,
        -2 ** 63, 2 ** 64, 10 ** 400, units.Pi, units.Pi + 4096, 4096,
        4 * units.Mi, 64 * units.Mi]))
TEXTS = st.one_of(
    st.text(max_size=12),
    st.sampled_from([VOLUME, SNAPSHOT, HOST, '%s@%s' % (VOLUME, SNAPSHOT),
                     '', '.', '..', 'a\x00b', 'a\nb', 'x@y', '10G', '-1',
                     '1e400', 'NaN', '9' * 40, 'true', '127.0.0.1',
                     'attached', 'error', SERVER_UUID]))
SCALARS = st.one_of(st.none(), st.booleans(), INTS, TEXTS,
                    st.floats(allow_nan=True, allow_infinity=True))
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), inner,
                    max_size=4)), max_leaves=12)
# Values a handler would accept, per field: a body made of them gets past
# the parsing to the store and the service, where the deeper bugs are.
_NAMES = st.sampled_from(['x', 'y', 'z', 's', 't']) | TEXTS
PLAUSIBLE = {
    'name': _NAMES, 'snapshot': st.sampled_from(['x@s', 's', 'x@t']),
    'size': st.sampled_from([4096, 4 * units.Mi, 16 * units.Mi, units.Gi,
                             '1G', 0, units.Pi + 4096]),
    'chunk_size': st.sampled_from([4 * units.Mi, 64 * units.Mi, 4096]),
    'replicas': st.integers(1, 3), 'min_replicas': st.integers(1, 2),
    'stripe_unit': st.sampled_from([4096, 65536]),
    'stripe_count': st.integers(1, 4),
    'qos': st.dictionaries(st.sampled_from([
        'read_iops_sec', 'write_iops_sec', 'total_bytes_sec',
        'read_bytes_sec', 'burst']) | st.text(max_size=4),
        st.integers(0, 10 ** 6), max_size=2),
    'multiattach': st.booleans(), 'force': st.booleans(),
    'host': st.sampled_from([HOST, 'h2']) | TEXTS,
    'holder': st.sampled_from(['h', 'h2']) | TEXTS,
    'ttl': st.floats(0, 4000),
    'generation': st.integers(0, 3), 'epoch': st.integers(0, 3),
    'server_id': st.integers(0, 3),
    'status': st.sampled_from(['attached', 'error', 'detaching']) | TEXTS,
    'path': TEXTS, 'error': TEXTS, 'reason': TEXTS,
    'uuid': st.sampled_from([SERVER_UUID, 'cs2']) | TEXTS,
    'address': st.just('127.0.0.1'), 'rack': TEXTS,
    # A port nothing listens on: the master's connections to the chunk
    # servers it is told of fail at once.
    'port': st.just(9),
    'capacity': st.integers(0, 2 ** 40), 'used': st.integers(0, 2 ** 40),
    'free': st.integers(0, 2 ** 40),
    'lost_cache': st.booleans(), 'failure': TEXTS,
    'maintenance': st.booleans(), 'draining': st.booleans(),
    'chunks': st.lists(st.tuples(st.uuids().map(str), st.integers(0, 3),
                                 st.integers(0, 3)).map(list), max_size=3),
    'volumes': st.dictionaries(st.uuids().map(str), st.integers(0, 2 ** 40),
                               max_size=3),
    'scrub': st.dictionaries(TEXTS, SCALARS, max_size=3) | JSON,
}


@st.composite
def _plausible(draw, fields):
    """A JSON object of ``fields`` (each there half of the time), each
    with a value its handler accepts or (one in eight) any JSON value."""
    out = {}
    for name in fields:
        if draw(mutate.mostly(2)):
            strategy = PLAUSIBLE.get(name, JSON)
            out[name] = draw(strategy if draw(mutate.mostly(8)) else JSON)
    return out


def bodies(fields):
    """Bodies for a route whose handler reads ``fields``."""
    return st.one_of(_plausible(fields or FIELDS), _plausible(fields),
                     _plausible(fields), OTHER_BODIES)


OTHER_BODIES = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(FIELDS), SCALARS, max_size=8),
    JSON,
    st.binary(max_size=64))
# Path segments: those of records that exist (most often), or anything.
_PLACES = {
    'ref': st.sampled_from([VOLUME, '%s@%s' % (VOLUME, SNAPSHOT),
                            SNAPSHOT, 'y', 'z', 'y@t']),
    'host': st.sampled_from([HOST, 'h2']),
    'id': st.integers(0, 3).map(str),
    'idx': st.integers(0, 3).map(str),
}
SEGMENTS = st.one_of(
    st.integers(-2, 3).map(str), INTS.map(str), TEXTS,
    st.text(alphabet=st.characters(codec='utf-8'), max_size=8))
QUERIES = st.dictionaries(
    st.sampled_from(QUERY_KEYS) | st.text(max_size=4),
    st.one_of(st.integers(0, 3).map(str), st.sampled_from(['h', '1']),
              INTS.map(str), TEXTS), max_size=3)


def routes_of(app):
    """(method, path template, body fields) of every route of ``app``,
    e.g. ('PUT', '/v1/volumes/{ref}/size', ('force', 'size'))."""
    out = []
    for route in app.router.routes():
        info = route.resource.get_info()
        try:
            source = inspect.getsource(route.handler)
        except TypeError:
            source = ''
        # Handlers that hand the body to a helper: its fields too.
        for helper in re.findall(r'self\.(_\w+)\(', source):
            fn = getattr(api.MasterAPI, helper, None)
            if callable(fn):
                source += inspect.getsource(fn)
        out.append((route.method, info.get('formatter') or info.get('path'),
                    tuple(_fields(source))))
    return sorted(set(out))


# Every route of the master (its application, built but not started).
ROUTES = routes_of(api.MasterAPI(None, KEY).app())


class MasterServer:
    """A MasterAPI on 127.0.0.1 in a thread, over a new SQLite store."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix='ursa-fuzz-')
        self.store = store_mod.MetadataStore(
            'sqlite:///%s' % os.path.join(self.dir, 'master.sqlite'))
        self.store.upgrade()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever,
                                       name='fuzz-master', daemon=True)
        self.errors = _Errors()
        self.runner = None
        self.port = None

    def __enter__(self):
        for name in ('cinder_ursa', 'aiohttp'):
            logging.getLogger(name).addHandler(self.errors)
        self.thread.start()
        self._call(self._start())
        self._seed()
        return self

    def __exit__(self, *exc):
        try:
            self._call(self.runner.cleanup())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
            self.store.close()
            for name in ('cinder_ursa', 'aiohttp'):
                logging.getLogger(name).removeHandler(self.errors)
            shutil.rmtree(self.dir, ignore_errors=True)

    def _call(self, coro, timeout=60):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(
            timeout)

    async def _start(self):
        self.master = api.MasterAPI(self.store, KEY)
        self.app = self.master.app()
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, '127.0.0.1', 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def _seed(self):
        for method, path, body in [
                ('POST', '/v1/volumes', {'name': VOLUME, 'size': 16 * units.Mi,
                                         'chunk_size': 4 * units.Mi}),
                ('POST', '/v1/volumes/x/snapshots', {'name': SNAPSHOT}),
                ('POST', '/v1/volumes/x/attachments', {'host': HOST})]:
            status, _, text = self.request(method, path, body)
            assert status in (200, 201), (path, status, text)
        self.errors.records.clear()

    def request(self, method, target, body=None, headers=None, sign=True):
        """Send one request (``target``: raw path and query); return
        (status, content type, body text)."""
        if body is None:
            raw = b''
        elif isinstance(body, bytes):
            raw = body
        else:
            raw = json.dumps(body).encode()
        head = {'Host': '127.0.0.1', 'Connection': 'close',
                'Content-Type': 'application/json',
                'Content-Length': str(len(raw))}
        if sign:
            path, _, query = target.partition('?')
            head.update(signed_headers(method, path, query, raw))
        lines = [b'%s %s HTTP/1.1' % (method.encode(), target.encode())]
        for k, v in list(head.items()) + list((headers or {}).items()):
            v = v if isinstance(v, bytes) else v.encode('latin-1')
            lines.append(k.encode() + b': ' + v)
        with socket.create_connection(('127.0.0.1', self.port),
                                      timeout=30) as sock:
            sock.sendall(b'\r\n'.join(lines) + b'\r\n\r\n' + raw)
            resp = http.client.HTTPResponse(sock, method=method)
            resp.begin()
            text = resp.read().decode('utf-8', 'replace')
            return resp.status, resp.getheader('Content-Type', ''), text


class _Errors(logging.Handler):
    """Tracebacks logged (an unforeseen exception); an ERROR without one
    is a message for the operator (a chunk server reporting a failed
    disk), not a bug."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records = []

    def emit(self, record):
        if record.exc_info:
            self.records.append(record)


def _quote(segment):
    return urllib.parse.quote(segment, safe='')


@st.composite
def _target(draw, route):
    """(method, raw path and query) for ``route``, its placeholders filled
    with arbitrary segments."""
    method, template, _ = route
    def segment(match):
        known = _PLACES.get(match.group(1))
        if known is not None and draw(mutate.mostly(4)):
            return _quote(draw(known))
        return _quote(draw(SEGMENTS))
    path = re.sub(r'\{(\w+)\}', segment, template)
    query = draw(QUERIES)
    if query:
        path += '?' + urllib.parse.urlencode(query)
    return method, path


def _header_safe(raw):
    """Bytes a header value may hold (RFC 9110: no control characters
    but tab); others are refused by aiohttp's parser before any handler
    runs."""
    return bytes(c for c in raw if c == 9 or 32 <= c != 127)


SIGNED = st.sampled_from(ROUTES).flatmap(
    lambda route: st.tuples(_target(route), bodies(route[2])))
UNSIGNED = st.tuples(st.sampled_from(ROUTES).flatmap(_target), OTHER_BODIES,
                     st.one_of(
        st.none(), st.text(max_size=80).map(
            lambda t: _header_safe(t.encode('utf-8', 'surrogatepass'))),
        st.binary(max_size=80).map(_header_safe),
        st.tuples(st.integers(-2 ** 70, 2 ** 70), st.text(
            alphabet='0123456789abcdefABCDEF\u0661', min_size=60,
            max_size=68)).map(lambda t: ('%d:%s' % t).encode()),
        st.sampled_from([b'1:' + b'a' * 64, b'9' * 400 + b':' + b'a' * 64,
                         b':', b'', b'\xff:\xff', b'v3:', b'v3:admin',
                         b'v3:admin:1:' + b'a' * 32 + b':' + b'b' * 64 +
                         b':' + b'c' * 64]),
        # v3: a principal (known, unknown or malformed) and fields.
        st.tuples(st.one_of(st.sampled_from(['admin', 'nobody']),
                            st.text(max_size=70)),
                  st.integers(-2 ** 70, 2 ** 70),
                  st.text(alphabet='0123456789abcdef:', max_size=200)).map(
            lambda t: _header_safe(('v3:%s:%d:%s' % t).encode(
                'utf-8', 'surrogatepass')))))


def _check_error_body(status, ctype, text, where):
    assert ctype.startswith('application/json'), (where, status, text)
    if where[0] == 'HEAD':
        return None  # a HEAD reply has no body
    err = json.loads(text)['error']
    assert isinstance(err['code'], str) and isinstance(
        err['message'], str), (where, text)
    return err


def check_signed(server, case):
    (method, target), body = case
    status, ctype, text = server.request(method, target, body)
    where = (method, target, body)
    records = [r.getMessage() for r in server.errors.records]
    server.errors.records.clear()
    assert status < 500 or status in EXPECTED_5XX, (where, status, text)
    assert not records, (where, status, records)
    if status >= 400 and not (status in AIOHTTP_TEXT and
                              not ctype.startswith('application/json')):
        _check_error_body(status, ctype, text, where)


def check_unsigned(server, case):
    (method, target), body, value = case
    headers = {} if value is None else {auth.HEADER: value}
    status, ctype, text = server.request(method, target, body, headers,
                                         sign=False)
    where = (method, target, value)
    records = [r.getMessage() for r in server.errors.records]
    server.errors.records.clear()
    assert not records, (where, status, records)
    if target.split('?', 1)[0] in UNAUTHENTICATED:
        assert status < 500, (where, status, text)
        return
    assert status == 401, (where, status, text)
    err = _check_error_body(status, ctype, text, where)
    assert err is None or err['code'] == 'not_authorized', (where, err)

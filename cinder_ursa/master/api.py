"""The master's REST API (aiohttp, JSON, versioned under /v1).

Every request but ``GET /`` must carry the cluster-key signature (see
:mod:`cinder_ursa.common.auth`): checked, with its nonce, before the
body is read; then the body is read (within ``body_timeout``) and
checked against the hash the signature covers.  A request that fails
the check is answered 401 and its connection closed.  Errors are JSON bodies
``{"error": {"code": ..., "message": ...}}`` with the HTTP status of the
exception class: one table (``UrsaError.http_status``) maps them.

Routes parse and check what a request carries, then call the store for
what only reads or writes records, or :mod:`.service` for what must also
reach the chunk servers (leases, snapshots, revert, deletion).
"""

import asyncio
import json
import logging
import math
import time
import urllib.parse

from aiohttp import web

from cinder_ursa import exception
from cinder_ursa.common import auth
from cinder_ursa.common import units
from cinder_ursa.master import hostbeats
from cinder_ursa.master import listener
from cinder_ursa.master import metrics as metrics_mod
from cinder_ursa.master import service as service_mod
from cinder_ursa.master import store as store_mod
from cinder_ursa.master.store import tally
from cinder_ursa.protocol import roles
from cinder_ursa.protocol import tickets

LOG = logging.getLogger(__name__)

API_VERSION = 'v1'
# Every integer the API reads must fit a signed 64-bit number: that is
# what SQL (BIGINT) and the data protocol hold; larger ones failed deep
# down, as 500s, or were stored and broke sums later.
INT64_BOUND = 2 ** 63
# A number written as text ("10G") longer than this is no number (and
# int() refuses more than 4300 digits with a ValueError).
NUMBER_TEXT_MAX = 32
# A chunk server's registration ([ursa_master] registration_max_body):
# the one request that may be larger than 4 MiB, once signed.
REGISTRATION_PATH = '/%s/chunkservers' % API_VERSION
REGISTRATION_MAX_BODY = 256 * units.Mi
# Replicas of a registration classified per database call.
REGISTER_SLICE = 50000
# Chunks one chunk-map request may allocate (a lookup reads up to 65536).
ALLOCATE_MAX = 8192
# A failed data directory's reason is kept to this many characters.
FAILURE_MAX = 500
# What a request was signed by: (principal, role, the key that
# verified it), set by the auth middleware.
PRINCIPAL = web.RequestKey('ursa_principal', tuple)
# Peers whose v1 (legacy) signatures were logged; past this many, no
# more are remembered (nor logged).
LEGACY_PEERS_MAX = 1024
# A lease's ticket expires this many seconds after the lease: the chunk
# servers judge a ticket's expiry by their own clocks, which may run
# ahead of the master's (NTP keeps them far closer).  It is no grace for
# a lost holder: a new holder's generation, pushed to the chunk servers,
# revokes the old one's ticket at once, whatever its expiry.
TICKET_CLOCK_SLACK = 60
# The paging parameters of a listing (GET /v1/volumes, /v1/snapshots), as
# Cinder's: at most ``limit`` items, those after ``marker`` (the name or
# id of the last item of the previous page), in name order or its
# reverse.
PAGE_PARAMS = ('limit', 'marker', 'sort_dir')
# The filters of GET /v1/volumes, and the statuses ``status`` may name
# (a volume in the trash is never listed).
VOLUME_FILTERS = ('name_prefix', 'name_contains', 'status')
VOLUME_STATUSES = ('available', 'reverting', 'deleting')
# The same for GET /v1/snapshots and /v1/volumes/{ref}/snapshots.
SNAPSHOT_FILTERS = VOLUME_FILTERS
SNAPSHOT_STATUSES = ('creating', 'available')
# Peers whose full (unpaged) listings were logged; past this many, no
# more are remembered (nor logged).
FULL_LISTING_PEERS_MAX = 1024


def _int64(value, what):
    """``value`` if |value| < 2**63, else InvalidArgument naming it."""
    if not -INT64_BOUND < value < INT64_BOUND:
        raise exception.InvalidArgument(
            reason='%s is out of range: integers must be between '
                   '-(2**63 - 1) and 2**63 - 1' % what)
    return value


def _error_response(exc):
    err = {'code': exc.code, 'message': str(exc)}
    headers = None
    leader = getattr(exc, 'leader', None)
    if leader:
        # A standby names the leader: clients try it next.
        err['leader'] = leader
        headers = {'Location': leader}
    retry_after = getattr(exc, 'retry_after', None)
    if retry_after is not None:
        # HandoverPending: seconds until the master takes the lease by
        # force (the requester's deadline).
        err['retry_after'] = retry_after
    return web.json_response({'error': err}, status=exc.http_status,
                             headers=headers)


async def _last_reply(request, resp):
    """Send ``resp`` and close the connection at once, without reading
    the rest of the body (aiohttp would read it for up to 10 s): an
    unauthenticated or stalled peer keeps no connection (listener)."""
    resp.force_close()
    await resp.prepare(request)
    await resp.write_eof()
    if request.protocol is not None:
        request.protocol.force_close()
    return resp


@web.middleware
async def _errors(request, handler):
    try:
        return await handler(request)
    except exception.UrsaError as e:
        if e.http_status >= 500 and not isinstance(
                e, (exception.InsufficientReplicas, exception.NotLeader,
                    auth.ReplayCacheFull)):
            LOG.exception('%s %s failed', request.method, request.path)
        if isinstance(e, exception.NotAuthorized):
            return await _last_reply(request, _error_response(e))
        return _error_response(e)
    except web.HTTPException:
        raise
    except ConnectionResetError as e:
        # The client went away while its request was read (its host's
        # link went down, it was killed): nobody to answer.
        LOG.info('%s %s: the client went away (%s)', request.method,
                 request.path, e)
        return _error_response(exception.InvalidArgument(
            reason='the request was cut off: %s' % e))
    except Exception as e:  # noqa: BLE001 - last resort: a clear 500
        LOG.exception('%s %s failed unexpectedly', request.method,
                      request.path)
        return _error_response(exception.InternalError(reason=str(e)))


SCRUB_TEXT_MAX = 512     # characters kept of a scrub error


def _scrub_report(report, depth=0):
    """A chunk server's scrub progress (heartbeat) as the master keeps
    it: numbers, short texts and one level of nesting (the light scrub),
    nothing else (it is only shown)."""
    if not isinstance(report, dict):
        return None
    out = {}
    for k, v in list(report.items())[:64]:
        if isinstance(v, bool) or v is None:
            out[str(k)] = v
        elif isinstance(v, int) and abs(v) < INT64_BOUND or \
                isinstance(v, float) and math.isfinite(v):
            out[str(k)] = v
        elif isinstance(v, str):
            out[str(k)] = v[:SCRUB_TEXT_MAX]
        elif isinstance(v, dict) and not depth:
            out[str(k)] = _scrub_report(v, 1)
    return out


class _Body:
    """Typed access to a JSON request body; bad input -> InvalidArgument."""

    def __init__(self, data):
        if not isinstance(data, dict):
            raise exception.InvalidArgument(
                reason='the request body must be a JSON object')
        self.data = data

    def get(self, name, kind, default=None, required=False):
        if name not in self.data or self.data[name] is None:
            if required:
                raise exception.InvalidArgument(reason='"%s" is required'
                                                % name)
            return default
        value = self.data[name]
        if kind is int:
            if isinstance(value, str):
                if len(value) > NUMBER_TEXT_MAX:
                    raise exception.InvalidArgument(
                        reason='"%s" is too long for a number (more than %d '
                               'characters)' % (name, NUMBER_TEXT_MAX))
                value = units.parse_size(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise exception.InvalidArgument(
                    reason='"%s" must be an integer' % name)
            _int64(value, '"%s"' % name)
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise exception.InvalidArgument(
                    reason='"%s" must be a number' % name)
            try:
                value = float(value)
            except OverflowError:
                value = math.inf
            if not math.isfinite(value):
                raise exception.InvalidArgument(
                    reason='"%s" is out of range: it must be a finite '
                           'number' % name)
        elif not isinstance(value, kind):
            raise exception.InvalidArgument(
                reason='"%s" must be of type %s' % (name, kind.__name__))
        return value


async def _body(request):
    # The auth middleware has read the body already (aiohttp keeps it):
    # can_read_body is False then, body_exists still says if there is one.
    if not request.body_exists or not await request.read():
        return _Body({})
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise exception.InvalidArgument(
            reason='the request body is not valid JSON: %s' % e) from None
    except RecursionError:
        raise exception.InvalidArgument(
            reason='the request body is nested too deeply: send a flat '
                   'JSON object') from None
    except (ValueError, OverflowError) as e:
        # int() refuses numbers of more than 4300 digits.
        raise exception.InvalidArgument(
            reason='the request body holds a number out of range: %s'
            % e) from None
    return _Body(data)


def _int_query(request, name, default=None):
    value = request.query.get(name)
    if value is None:
        if default is None:
            raise exception.InvalidArgument(reason='query parameter "%s" is '
                                                   'required' % name)
        return default
    try:
        number = int(value)
    except ValueError:
        raise exception.InvalidArgument(
            reason='query parameter "%s" must be an integer' % name) from None
    return _int64(number, 'query parameter "%s"' % name)


class _Page:
    """The paging parameters of a listing request, checked: ``limit``
    (1 or more, lowered to ``max_limit``; ``max_limit`` when absent),
    ``marker``, ``sort_dir``; and whether the request is a full listing
    (none of the paging or filter parameters, while ``legacy`` allows
    it): every item, unpaged, as before paginated listings.  An unknown
    or repeated parameter is a 400: a misspelt filter would otherwise
    list everything."""

    def __init__(self, request, max_limit, filters, legacy):
        query = request.query
        known = PAGE_PARAMS + filters
        unknown = sorted(set(query) - set(known))
        if unknown:
            raise exception.InvalidArgument(
                reason='unknown query parameter(s) %s: this listing takes '
                       '%s' % (', '.join('"%s"' % u for u in unknown),
                               ', '.join(known)))
        for name in query:
            if len(query.getall(name)) > 1:
                raise exception.InvalidArgument(
                    reason='query parameter "%s" is given more than once: '
                           'give it once (status takes a comma-separated '
                           'list)' % name)
        self.full = legacy and not any(k in query for k in known)
        self.limit = max_limit
        if 'limit' in query:
            limit = _int_query(request, 'limit')
            if limit < 1:
                raise exception.InvalidArgument(
                    reason='query parameter "limit" must be 1 or more (leave '
                           'it out for a page of the most a page holds, '
                           '[ursa_master] max_list_limit = %d)' % max_limit)
            self.limit = min(limit, max_limit)
        self.marker = query.get('marker')
        if self.marker == '':
            raise exception.InvalidArgument(
                reason='query parameter "marker" is empty: give the name of '
                       'the last item of the previous page, or leave it out '
                       'to start from the first')
        sort_dir = query.get('sort_dir', 'asc')
        if sort_dir not in ('asc', 'desc'):
            raise exception.InvalidArgument(
                reason='query parameter "sort_dir" must be "asc" or "desc", '
                       'not %r' % sort_dir)
        self.descending = sort_dir == 'desc'

    def links(self, request, field, last):
        """``{field + '_links': [the next page's link]}``, as Cinder's
        ``volumes_links``: the request's own query with this page's
        limit and the last item's name ``last`` as the marker.  The
        href is a path under the master's URL (behind a proxy, an
        absolute URL would name the wrong host)."""
        query = [(k, v) for k, v in request.query.items()
                 if k not in ('limit', 'marker')]
        query += [('limit', str(self.limit)), ('marker', last)]
        href = '%s?%s' % (request.path, urllib.parse.urlencode(
            query, quote_via=urllib.parse.quote))
        return {field + '_links': [{'rel': 'next', 'href': href}]}


def _statuses(request, allowed):
    """The statuses a listing's ``status`` parameter names (a
    comma-separated list), each one of ``allowed``; None without it."""
    value = request.query.get('status')
    if value is None:
        return None
    statuses = [s.strip() for s in value.split(',') if s.strip()]
    bad = [s for s in statuses if s not in allowed]
    if bad or not statuses:
        raise exception.InvalidArgument(
            reason='query parameter "status" must name one or more of %s '
                   '(comma-separated), not %r' % (', '.join(allowed),
                                                  value))
    return statuses


def _held_chunks(body):
    """The replicas a registration reports: ``chunks``, a list of
    [volume, index, epoch], and/or ``held``, {volume: [index, epoch,
    index, epoch, ...]} (chunk servers holding many send that: about 10
    bytes a replica instead of 50)."""
    chunks = body.get('chunks', list, [])
    held = body.get('held', dict, {})
    try:
        out = [(_volume_id(v), _int64(int(i), 'index'),
                _int64(int(e), 'epoch')) for v, i, e in chunks]
        for v, flat in held.items():
            if not isinstance(flat, list) or len(flat) % 2 or not all(
                    type(x) is int for x in flat):
                raise TypeError('a list of integers, two per replica')
            out.extend((v, _int64(flat[k], 'index'),
                        _int64(flat[k + 1], 'epoch'))
                       for k in range(0, len(flat), 2))
    except (TypeError, ValueError, OverflowError):
        raise exception.InvalidArgument(
            reason='"chunks" must be a list of [volume, index, epoch] and '
                   '"held" an object of volume: [index, epoch, index, '
                   'epoch, ...], with 64-bit integers') from None
    return out


def _volume_id(value):
    if not isinstance(value, str):
        raise TypeError('a volume id is a string')
    return value


class PrincipalCache:
    """The principals' roles and keys, from the database, kept in memory:
    every request needs its signer's key before anything else.

    Reloaded when older than ``REFRESH`` seconds (a key created, rotated
    or revoked on another master counts here that much later; on this
    one, at once: :meth:`invalidate`), and for a name it does not know
    at most every ``MISS_INTERVAL`` seconds, so that requests naming
    unknown principals (anyone can send them) cost at most one
    database read a second.
    """

    REFRESH = 5.0
    MISS_INTERVAL = 1.0

    def __init__(self, store, admin_key, clock=time.monotonic):
        self.store = store
        self.admin_key = admin_key
        self.db = None            # MasterAPI sets it (the DB worker)
        self._clock = clock
        self._table = {}
        self._loaded = -math.inf
        self._lock = asyncio.Lock()

    def invalidate(self):
        self._loaded = -math.inf

    async def _reload(self, older_than):
        async with self._lock:
            # Another request may have reloaded while this one waited.
            if self._clock() - self._loaded <= older_than:
                return
            try:
                self._table = await self.db(self.store.principal_keys)
            except Exception as e:  # noqa: BLE001 - any database error
                if self._loaded == -math.inf and not self._table:
                    raise
                # The database is away for a moment: the keys read last
                # still hold (a change made meanwhile counts once it is
                # back), rather than every principal but admin refused.
                LOG.warning('Cannot reread the principals (%s); using '
                            'those read before', e)
            self._loaded = self._clock()

    async def lookup(self, name):
        """(role, keys to try) of ``name``, None if there is no such
        principal: the cluster key for ``admin``; a rotated principal's
        previous key too until its window ends."""
        if name == auth.ADMIN:
            # The cluster key, and a rotation's others.
            return 'admin', auth.keys_accepted(self.admin_key)
        age = self._clock() - self._loaded
        if age > self.REFRESH:
            await self._reload(self.REFRESH)
        elif name not in self._table and age > self.MISS_INTERVAL:
            await self._reload(self.MISS_INTERVAL)
        entry = self._table.get(name)
        if entry is None:
            return None
        role, key, previous, until = entry
        if previous is not None and time.time() < until:
            return role, (key, previous)
        return role, (key,)


class MasterAPI:
    """REST routes over a :class:`MetadataStore` and the
    :class:`~cinder_ursa.master.service.MasterService` built on it."""

    def __init__(self, store, key, server_timeout=15.0, lease_ttl=30.0,
                 ticket_ttl=600.0, default_replicas=3, default_min_replicas=2,
                 default_chunk_size=64 * units.Mi,
                 max_volume_size=units.Pi, max_list_limit=1000,
                 legacy_full_listings=True, signature_window=auth.WINDOW,
                 replay_cache=auth.REPLAY_CACHE_SIZE,
                 accept_legacy_signatures=True, body_timeout=30.0,
                 registration_max_body=REGISTRATION_MAX_BODY,
                 guard=None, names=None, metrics=None, **repair):
        self.store = store
        # The authorities (host:port) this master serves under: a v3
        # signature for another is refused (None: any, as in tests and
        # tools; ursa-master always sets them: cmd.master.signature_names).
        self.names = names
        self.principals = PrincipalCache(store, key)
        self.signature_window = signature_window
        self.replay = auth.ReplayCache(replay_cache)
        self.accept_legacy = accept_legacy_signatures
        self.body_timeout = body_timeout
        self.registration_max_body = registration_max_body
        # Marks the connections that sent a request (listener).
        self.guard = guard if guard is not None else \
            listener.ConnectionGuard()
        self._legacy_peers = set()
        self.max_volume_size = max_volume_size
        # [ursa_master] max_list_limit and legacy_full_listings.
        self.max_list_limit = max_list_limit
        self.legacy_full_listings = legacy_full_listings
        self._full_listing_peers = set()
        self.key = key
        self.server_timeout = server_timeout
        self.lease_ttl = lease_ttl
        self.ticket_ttl = ticket_ttl
        self.defaults = dict(replicas=default_replicas,
                             min_replicas=default_min_replicas,
                             chunk_size=default_chunk_size)
        self.service = service_mod.MasterService(store, key, server_timeout,
                                                 **repair)
        self.db = self.service.db
        self.principals.db = self.db
        # ``metrics``: the process's ProcessMetrics, to export this
        # master's families in (None: no metrics).
        self.metrics = None
        if metrics is not None:
            self.metrics = metrics_mod.MasterMetrics(self.service, metrics)
            self.service.metrics = self.metrics

    # --- app ---------------------------------------------------------------

    def app(self):
        middlewares = [_errors, self._auth, self._leader_only]
        if self.metrics is not None:
            # Outermost: it sees the status of every answer, errors too.
            middlewares.insert(0, self.metrics.middleware)
        app = web.Application(middlewares=middlewares,
                              client_max_size=4 * units.Mi)
        v = '/' + API_VERSION
        app.router.add_get('/', self.versions)
        app.router.add_get(v, self.versions)
        app.router.add_get(v + '/cluster', self.cluster)
        app.router.add_get(v + '/chunkservers', self.list_servers)
        app.router.add_get(v + '/inventory', self.inventory)
        app.router.add_post(v + '/chunkservers', self.register_server)
        app.router.add_get(v + '/chunkservers/{id}', self.show_server)
        app.router.add_delete(v + '/chunkservers/{id}', self.remove_server)
        app.router.add_put(v + '/chunkservers/{id}/maintenance',
                           self.set_maintenance)
        app.router.add_put(v + '/chunkservers/{id}/draining',
                           self.set_draining)
        app.router.add_post(v + '/repair', self.repair_now)
        app.router.add_post(v + '/cluster/recount', self.recount_figures)
        app.router.add_put(v + '/chunkservers/{id}/heartbeat',
                           self.heartbeat)
        app.router.add_get(v + '/volumes', self.list_volumes)
        app.router.add_post(v + '/volumes', self.create_volume)
        app.router.add_get(v + '/volumes/{ref}', self.show_volume)
        app.router.add_delete(v + '/volumes/{ref}', self.delete_volume)
        app.router.add_patch(v + '/volumes/{ref}', self.update_volume)
        app.router.add_get(v + '/volumes/{ref}/chunks', self.chunk_map)
        app.router.add_post(v + '/volumes/{ref}/chunks/{idx}/join',
                            self.join_replica)
        app.router.add_post(v + '/volumes/{ref}/chunks/{idx}/promote',
                            self.promote_replica)
        app.router.add_post(v + '/volumes/{ref}/chunks/{idx}/abandon',
                            self.abandon_join)
        app.router.add_post(v + '/volumes/{ref}/chunks/{idx}/drop',
                            self.drop_replica)
        app.router.add_post(v + '/volumes/{ref}/lease', self.acquire_lease)
        app.router.add_put(v + '/volumes/{ref}/lease', self.renew_lease)
        app.router.add_delete(v + '/volumes/{ref}/lease', self.release_lease)
        app.router.add_post(v + '/volumes/{ref}/lease/revoke',
                            self.revoke_lease)
        app.router.add_get(v + '/volumes/{ref}/lease-history',
                           self.lease_history)
        app.router.add_post(v + '/volumes/{ref}/tickets', self.read_ticket)
        app.router.add_put(v + '/volumes/{ref}/size', self.resize)
        app.router.add_get(v + '/attachments', self.list_attachments)
        app.router.add_get(v + '/volumes/{ref}/attachments',
                           self.list_attachments)
        app.router.add_post(v + '/volumes/{ref}/attachments', self.attach)
        app.router.add_get(v + '/volumes/{ref}/attachments/{host}',
                           self.show_attachment)
        app.router.add_put(v + '/volumes/{ref}/attachments/{host}',
                           self.update_attachment)
        app.router.add_delete(v + '/volumes/{ref}/attachments/{host}',
                              self.detach)
        app.router.add_get(v + '/hosts/{host}', self.show_host)
        app.router.add_post(v + '/hosts/{host}/fence', self.fence_host)
        app.router.add_delete(v + '/hosts/{host}/fence', self.unfence_host)
        app.router.add_get(v + '/fenced-hosts', self.list_fenced_hosts)
        app.router.add_put(v + '/hosts/{host}/heartbeat',
                           self.host_heartbeat)
        app.router.add_get(v + '/host-heartbeats', self.host_heartbeats)
        app.router.add_post(v + '/volumes/{ref}/revert', self.revert)
        app.router.add_post(v + '/volumes/{ref}/detach-parent',
                            self.detach_parent)
        app.router.add_get(v + '/volumes/{ref}/snapshots',
                           self.list_snapshots)
        app.router.add_post(v + '/volumes/{ref}/snapshots',
                            self.create_snapshot)
        app.router.add_get(v + '/snapshots', self.list_snapshots)
        app.router.add_get(v + '/snapshots/{ref}', self.show_snapshot)
        app.router.add_delete(v + '/snapshots/{ref}', self.delete_snapshot)
        app.router.add_patch(v + '/snapshots/{ref}', self.update_snapshot)
        app.router.add_get(v + '/principals', self.list_principals)
        app.router.add_post(v + '/principals', self.create_principal)
        app.router.add_post(v + '/principals/{name}/rotate',
                            self.rotate_principal)
        app.router.add_delete(v + '/principals/{name}',
                              self.revoke_principal)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    @web.middleware
    async def _auth(self, request, handler):
        if request.path in ('/', '/' + API_VERSION):
            # Unsigned: it does not make the connection one that sent a
            # request (see listener.py), or anyone could hold the master's
            # connections with it.
            return await handler(request)
        # What the client signed: the request target as it was sent.
        path, _, query = request.raw_path.partition('?')
        value = request.headers.get(auth.HEADER)
        name = auth.principal_of(value)
        found = await self.principals.lookup(name)
        if found is None:
            raise exception.NotAuthorized(
                reason='unknown principal %r: it was revoked, or never '
                       'created ("ursa key list" shows them; "ursa key '
                       'create" makes one), or [ursa] principal names '
                       'another' % name)
        role, keys = found
        signed = auth.verify(
            keys, request.method, path, query, value,
            window=self.signature_window, replay=self.replay,
            legacy=self.accept_legacy, unbound=self.accept_legacy,
            authority=auth.host_authority(request.host, request.secure),
            names=self.names)
        self.guard.request_seen(request)
        if request.method == 'POST' and path == REGISTRATION_PATH:
            # A signed registration lists every replica its server
            # holds: past 4 MiB from a few hundred thousand.  (A clone
            # has none of the original's keys: made before they are set.)
            request = request.clone(
                client_max_size=self.registration_max_body)
        request[PRINCIPAL] = (name, role, signed.key)
        self._authorize(request, name, role)
        if signed.version == 1:
            self._legacy_warning(request)
        # aiohttp keeps the body read here for the handler's json().
        try:
            body = await asyncio.wait_for(request.read(), self.body_timeout)
        except TimeoutError:
            return await _last_reply(request, web.json_response({'error': {
                'code': 'request_timeout',
                'message': 'the request body did not arrive within %s s '
                           '([ursa_master] http_body_timeout)'
                           % self.body_timeout}}, status=408))
        auth.check_body(signed, body)
        # The store's log lines of the changes it commits name who asked.
        token = store_mod.REQUESTER.set('%s from %s' % (name, request.remote))
        try:
            return await handler(request)
        finally:
            store_mod.REQUESTER.reset(token)

    def _authorize(self, request, name, role):
        """Forbidden (403) unless ``role`` may call this route; a host
        principal only for its own host (its name)."""
        resource = request.match_info.route.resource
        if resource is None:
            return          # no such route: the 404 says so
        route = resource.canonical[len('/' + API_VERSION):]
        if not roles.allows(role, request.method, route):
            raise exception.Forbidden(
                reason='principal %r has the role %s, which may not call '
                       '%s %s; sign as a principal whose role may ("ursa '
                       'key list"), or create one with "ursa key create '
                       'NAME --role ROLE"' % (name, role, request.method,
                                              route))
        if role != 'host':
            return
        host = request.match_info.get('host')
        if host is None and route.endswith('/attachments'):
            host = request.query.get('host', '')
        if host is not None:
            self._own_host(request, host)

    @staticmethod
    def _own_host(request, host):
        """Forbidden unless a host principal (named after its host) asks
        for ``host`` (other principals may ask for any)."""
        name, role, _ = request.get(PRINCIPAL,
                                    (auth.ADMIN, 'admin', None))
        if role == 'host' and host != name:
            raise exception.Forbidden(
                reason='principal %r (role host) may only ask for its own '
                       'host %r, not %r: give each hypervisor a principal '
                       'named after it ("ursa key create HOST --role '
                       'host")' % (name, name, host))

    def _own_holder(self, request, holder):
        """A host principal takes, renews and releases only leases of
        holders on its host (store.holder_host)."""
        self._own_host(request, store_mod.holder_host(holder))

    @staticmethod
    def _own_server_host(request, host):
        """Forbidden unless a chunkserver principal (named after its
        host, [ursa_chunkserver] host) speaks for a server of its host
        (other principals may speak for any)."""
        name, role, _ = request[PRINCIPAL]
        if role == 'chunkserver' and host != name:
            raise exception.Forbidden(
                reason='principal %r (role chunkserver) may only speak for '
                       'the chunk servers of its host %r, not of %r: give '
                       'each storage host a principal named after it '
                       '([ursa_chunkserver] host)' % (name, name, host))

    async def _own_server(self, request, server_id):
        """_own_server_host of chunk server ``server_id``."""
        if request[PRINCIPAL][1] == 'chunkserver':
            self._own_server_host(request, await self.db(
                self.store.server_host, server_id))

    async def _attached_here(self, request, ref):
        """Forbidden unless a host principal's host has volume ``ref``
        attached: a hypervisor opens for writing only what Cinder
        attached to it (ursa-nbd and ursa-attach serve only those), and
        gets a ticket to read only those."""
        name, role, _ = request[PRINCIPAL]
        if role != 'host':
            return
        try:
            await self.db(self.store.get_attachment, ref, name)
        except exception.NotFound as e:
            if e.kwargs.get('kind') != 'attachment':
                raise       # no such volume: a 404 as for anyone
            raise exception.Forbidden(
                reason='volume %s is not attached to host %s (principal '
                       '%r, role host): attach it there first (Cinder '
                       'does, through the master)' % (ref, name, name)
            ) from None

    def _legacy_warning(self, request):
        """Log once per peer that it still signs v1 (to be upgraded)."""
        peer = request.remote
        if peer in self._legacy_peers or \
                len(self._legacy_peers) >= LEGACY_PEERS_MAX:
            return
        self._legacy_peers.add(peer)
        LOG.warning('%s signs its requests with the deprecated %s v1 '
                    'signature (replayable, body and query unsigned): '
                    'upgrade it, then set [ursa_master] '
                    'accept_legacy_signatures = false', peer, auth.HEADER)

    @web.middleware
    async def _leader_only(self, request, handler):
        """A standby answers every call but the version list with HTTP 503
        naming the leader (NotLeader)."""
        if request.path not in ('/', '/' + API_VERSION) and \
                not self.service.is_leader():
            raise self.service.not_leader()
        return await handler(request)

    async def _start(self, app):
        self.service.start()

    async def _stop(self, app):
        await self.service.stop_election()
        self.service.stop()

    # --- handlers ----------------------------------------------------------

    async def versions(self, request):
        return web.json_response({'versions': [
            {'id': API_VERSION, 'status': 'CURRENT'}]})

    async def cluster(self, request):
        status = await self.db(self.store.cluster_status)
        status['allocated_bytes_total'] = self.service.allocated_total()
        status['repair'] = self.service.repair_status()
        status['scrub'] = self.service.scrub_status()
        status['masters'] = self.service.masters()
        # A slow disk slows every volume with a replica on it: a warning.
        slow = self._slow_servers()
        status['slow_servers'] = slow
        if slow and status.get('health') == 'HEALTH_OK':
            status['health'] = 'HEALTH_WARN'
        return web.json_response(status)

    def _slow_servers(self):
        self.service.slow.judge()
        return self.service.slow.slow_servers()

    def _with_latency(self, server):
        """``server`` (a dict) with its recent disk latency and whether
        it is judged slow (see slowdisk.py)."""
        server.update(self.service.slow.server(server['id']))
        return server

    async def inventory(self, request):
        """Everything the master knows of where data should be: what
        ``ursa cluster check`` compares with the chunk servers."""
        inv = await self.db(self.store.inventory)
        inv['unfinished_after'] = service_mod.UNFINISHED_AFTER
        return web.json_response(inv)

    async def list_servers(self, request):
        servers = await self.db(self.store.list_servers)
        self.service.slow.judge()
        return web.json_response(
            {'chunkservers': [self._with_latency(s) for s in servers]})

    async def register_server(self, request):
        b = await _body(request)
        chunks = _held_chunks(b)
        port = b.get('port', int, required=True)
        self._own_server_host(request, b.get('host', str, required=True))
        if not 0 < port < 65536:
            raise exception.InvalidArgument(reason='port out of range')
        primaries = []
        lost_cache = b.get('lost_cache', bool, False)
        server, stale, orphans, gens, seqs, snaps = await self.db(
            self.store.register_server,
            b.get('uuid', str, required=True),
            b.get('host', str, required=True), b.get('rack', str, 'default'),
            b.get('address', str, required=True), port,
            b.get('capacity', int, 0), b.get('used', int, 0),
            b.get('free', int, 0), chunks,
            failure=self._failure(b), lost_cache=lost_cache,
            primaries=primaries, live=self.service.live_servers(),
            classify=False)
        if server['state'] != 'failed':
            # What it holds, a slice per database call: other requests
            # are served in between.
            for at in range(0, len(chunks), REGISTER_SLICE):
                more = await self.db(self.store.classify_replicas,
                                     server['id'],
                                     chunks[at:at + REGISTER_SLICE])
                stale += more[0]
                orphans += more[1]
        if primaries:
            self.service.resync_soon()
        self.service.registered(server['id'])
        self.service.seen(server['id'], lost_cache)
        self._note_usage(server['id'], b)
        return web.json_response({
            'server': server, 'stale': stale, 'orphans': orphans,
            # What it reported, as read (a chunk server sending "held"
            # checks that its master knows that form).
            'reported': len(chunks),
            'generations': gens, 'snapseqs': seqs, 'snapshots': snaps,
            'heartbeat_interval': max(self.server_timeout / 3.0, 0.2),
            'server_timeout': self.server_timeout,
            'latency_window': self.service.slow.window,
            'term': self.service.term()})

    async def heartbeat(self, request):
        sid = _path_int(request, 'id')
        await self._own_server(request, sid)
        b = await _body(request)
        primaries = []
        await self.db(self.store.heartbeat, sid, b.get('capacity', int, 0),
                      b.get('used', int, 0), b.get('free', int, 0),
                      failure=self._failure(b), primaries=primaries,
                      server_uuid=b.get('uuid', str))
        if primaries:
            self.service.resync_soon()
        self.service.seen(sid)
        self._note_usage(sid, b)
        self.service.note_scrub(sid, _scrub_report(b.get('scrub', dict)))
        self.service.slow.note(sid, b.get('latency', dict))
        return web.json_response({'ok': True,
                                  'dropped': self.service.take_drops(sid),
                                  'server_timeout': self.server_timeout,
                                  'latency_window': self.service.slow.window,
                                  'term': self.service.term()})

    async def set_maintenance(self, request):
        sid = _path_int(request, 'id')
        on = (await _body(request)).get('maintenance', bool, required=True)
        return web.json_response(
            {'server': await self.db(self.store.set_maintenance, sid, on)})

    async def show_server(self, request):
        server = await self.db(self.store.get_server,
                               _path_int(request, 'id'))
        self.service.slow.judge()
        return web.json_response({'server': self._with_latency(server)})

    async def remove_server(self, request):
        return web.json_response({'server': await self.db(
            self.store.remove_server, _path_int(request, 'id'),
            self.server_timeout)})

    async def set_draining(self, request):
        sid = _path_int(request, 'id')
        on = (await _body(request)).get('draining', bool, required=True)
        return web.json_response(
            {'server': await self.db(self.store.set_draining, sid, on)})

    async def recount_figures(self, request):
        """Count the kept figures (store/tally.py) again from the records
        and replace them: what differed, a line each."""
        drift = await self.db(self.store.recount_tallies)
        return web.json_response({'recount': {
            'drifted': tally.describe(drift)}})

    async def repair_now(self, request):
        """Run the repair planner once now (``ursa cluster check
        --repair``): the jobs it started and its counts."""
        jobs = await self.service.repair_round()
        return web.json_response({'repair': dict(
            self.service.repair_status(),
            started=[service_mod.job_dict(j) for j in jobs])})

    @staticmethod
    def _failure(body):
        """Why the server's data directory failed, if it says it did."""
        failure = body.get('failure', str)
        if failure is not None:
            failure = failure[:FAILURE_MAX] or 'unknown'
        return failure

    def _note_usage(self, sid, body):
        vols = body.get('volumes', dict, {})
        self.service.note_usage(sid, {
            str(k): n for k, n in vols.items()
            if isinstance(n, int) and not isinstance(n, bool)
            and 0 <= n < INT64_BOUND})

    def _allocated(self, vol):
        return self.service.allocated(vol)

    def _check_size(self, size):
        store_mod.check_volume_size(size, self.max_volume_size)

    async def list_volumes(self, request):
        """A page of the volumes in name order (see _Page), filtered by
        ``name_prefix``, ``name_contains`` (ignoring case) and
        ``status``; ``volumes_links`` names the next page when there is
        one.  A full listing (a client older than pagination, with
        [ursa_master] legacy_full_listings) gets every volume."""
        page = _Page(request, self.max_list_limit, VOLUME_FILTERS,
                     self.legacy_full_listings)
        if page.full:
            self._full_listing_warning(request)
            vols = await self.db(self.store.list_volumes)
            return web.json_response({'volumes': [self._allocated(v)
                                                  for v in vols]})
        # One more than the page: whether there is a next page.
        vols = await self.db(
            self.store.list_volumes, page.limit + 1, page.marker,
            page.descending, request.query.get('name_prefix'),
            request.query.get('name_contains'),
            _statuses(request, VOLUME_STATUSES))
        reply = {'volumes': [self._allocated(v)
                             for v in vols[:page.limit]]}
        if len(vols) > page.limit:
            reply.update(page.links(request, 'volumes',
                                    vols[page.limit - 1]['name']))
        return web.json_response(reply)

    def _full_listing_warning(self, request):
        """Log once per peer that it asked for a full listing (a client
        older than paginated listings, to be upgraded)."""
        peer = request.remote
        if peer in self._full_listing_peers or \
                len(self._full_listing_peers) >= FULL_LISTING_PEERS_MAX:
            return
        self._full_listing_peers.add(peer)
        LOG.warning('%s (%s) listed %s without a limit, the way clients '
                    'older than paginated listings do: it got every item '
                    'in one answer. Upgrade it, then set [ursa_master] '
                    'legacy_full_listings = false', peer,
                    request[PRINCIPAL][0], request.path)

    async def create_volume(self, request):
        b = await _body(request)
        replicas = b.get('replicas', int, self.defaults['replicas'])
        min_replicas = b.get('min_replicas', int,
                             min(self.defaults['min_replicas'], replicas))
        parent = b.get('snapshot', str)
        size = b.get('size', int, required=parent is None)
        if parent is not None and size is None:
            size = (await self.db(self.store.get_snapshot, parent))['size']
        self._check_size(size)
        vol = await self.db(
            self.store.create_volume, b.get('name', str, required=True),
            size, replicas, min_replicas,
            b.get('chunk_size', int, self.defaults['chunk_size']),
            b.get('stripe_unit', int), b.get('stripe_count', int, 1),
            parent, b.get('qos', dict), b.get('multiattach', bool, False))
        return web.json_response({'volume': self._allocated(vol)},
                                 status=201)

    async def show_volume(self, request):
        vol = await self.db(self.store.get_volume, request.match_info['ref'])
        return web.json_response({'volume': self._allocated(vol)})

    async def update_volume(self, request):
        b = await _body(request)
        vol = await self.db(self.store.update_volume,
                            request.match_info['ref'], b.get('name', str),
                            b.get('qos', dict), b.get('multiattach', bool))
        return web.json_response({'volume': self._allocated(vol)})

    async def delete_volume(self, request):
        await self.service.delete_volume(request.match_info['ref'])
        return web.Response(status=204)

    # --- snapshots -----------------------------------------------------------

    async def create_snapshot(self, request):
        b = await _body(request)
        snap = await self.service.create_snapshot(
            request.match_info['ref'], b.get('name', str, required=True))
        return web.json_response({'snapshot': snap}, status=201)

    async def update_snapshot(self, request):
        b = await _body(request)
        snap = await self.db(self.store.rename_snapshot,
                             request.match_info['ref'],
                             b.get('name', str, required=True))
        return web.json_response({'snapshot': snap})

    async def list_snapshots(self, request):
        """A page of the snapshots (of volume ``ref``, or of every
        volume) in the order of their volume's name and their sequence,
        as list_volumes pages volumes; the next page's marker is
        ``volume@name``."""
        ref = request.match_info.get('ref')
        page = _Page(request, self.max_list_limit, SNAPSHOT_FILTERS,
                     self.legacy_full_listings)
        if page.full:
            self._full_listing_warning(request)
            return web.json_response({'snapshots': await self.db(
                self.store.list_snapshots, ref)})
        snaps = await self.db(
            self.store.list_snapshots, ref, page.limit + 1, page.marker,
            page.descending, request.query.get('name_prefix'),
            request.query.get('name_contains'),
            _statuses(request, SNAPSHOT_STATUSES))
        reply = {'snapshots': snaps[:page.limit]}
        if len(snaps) > page.limit:
            last = snaps[page.limit - 1]
            reply.update(page.links(request, 'snapshots', '%s@%s' % (
                last['volume_name'], last['name'])))
        return web.json_response(reply)

    async def show_snapshot(self, request):
        return web.json_response({'snapshot': await self.db(
            self.store.get_snapshot, request.match_info['ref'])})

    async def delete_snapshot(self, request):
        await self.service.delete_snapshot(request.match_info['ref'])
        return web.Response(status=204)

    async def revert(self, request):
        b = await _body(request)
        vol = await self.service.revert(request.match_info['ref'],
                                        b.get('snapshot', str, required=True))
        return web.json_response({'volume': self._allocated(vol)})

    # --- attachments ---------------------------------------------------------

    async def attach(self, request):
        b = await _body(request)
        att = await self.db(self.store.attach, request.match_info['ref'],
                            b.get('host', str, required=True),
                            b.get('standby', bool, False))
        return web.json_response({'attachment': att}, status=201)

    async def list_attachments(self, request):
        return web.json_response({'attachments': await self.db(
            self.store.list_attachments, request.query.get('host'),
            request.match_info.get('ref'))})

    async def show_attachment(self, request):
        return web.json_response({'attachment': await self.db(
            self.store.get_attachment, request.match_info['ref'],
            request.match_info['host'])})

    async def update_attachment(self, request):
        b = await _body(request)
        return web.json_response({'attachment': await self.db(
            self.store.update_attachment, request.match_info['ref'],
            request.match_info['host'], b.get('status', str, required=True),
            b.get('path', str), b.get('error', str))})

    async def detach(self, request):
        fence = await self.db(self.store.detach, request.match_info['ref'],
                              request.match_info['host'])
        if fence:
            await self.service.fence(fence['volume_id'], fence['generation'])
        return web.Response(status=204)

    async def resize(self, request):
        ref = request.match_info['ref']
        b = await _body(request)
        size = b.get('size', int, required=True)
        self._check_size(size)
        vol = await self.db(self.store.resize, ref, size,
                            b.get('force', bool, False))
        return web.json_response({'volume': self._allocated(vol)})

    async def detach_parent(self, request):
        vol = await self.service.detach_parent(request.match_info['ref'])
        return web.json_response({'volume': self._allocated(vol)})

    async def chunk_map(self, request):
        ref = request.match_info['ref']
        start = _int_query(request, 'start', 0)
        count = _int_query(request, 'count', 1)
        if count > 65536:
            raise exception.InvalidArgument(reason='count is limited to 65536')
        allocate = request.query.get('allocate', '0').lower() in (
            '1', 'true', 'yes')
        if allocate and count > ALLOCATE_MAX:
            # Allocation holds the master's one database thread (some
            # 15,000 chunks/s on SQLite): bounded well within the 5 s
            # its election round waits for that thread.
            raise exception.InvalidArgument(
                reason='allocation is limited to %d chunks per request; '
                       'ask for the rest in further requests'
                       % ALLOCATE_MAX)
        if allocate:
            # A writer's (a host maps its clones' parents, writes none).
            await self._attached_here(request, ref)
        reply = await self.db(self.store.chunk_map, ref, start, count,
                              allocate)
        # Readers prefer the other replicas over these (client/cluster.py).
        reply['slow_servers'] = self.service.slow.slow_servers()
        return web.json_response(reply)

    async def drop_replica(self, request):
        ref = request.match_info['ref']
        idx = _path_int(request, 'idx')
        b = await _body(request)
        sid = b.get('server_id', int, required=True)
        epoch = b.get('epoch', int, required=True)
        # What a volume's writer reports: a host drops no replica of a
        # volume it does not have attached.
        await self._attached_here(request, ref)
        before = await self.db(self.store.chunk_members, ref, idx)
        chunk = await self.db(self.store.drop_replica, ref, idx, sid, epoch)
        self.service.note_failure(sid)
        if sid in before['replicas'] and sid not in [
                r['id'] for r in chunk['replicas']]:
            vol = await self.db(self.store.get_volume, ref)
            self.service.note_drop(sid, vol['id'], idx, chunk['epoch'])
            await self.service.tell_dropped(vol['id'], chunk, sid)
        if before['replicas'][:1] == [sid] and len(before['replicas']) > 1:
            # Its last write may have reached some replicas only (the
            # chunk is marked).
            self.service.resync_soon()
        return web.json_response({'chunk': chunk})

    async def _change_members(self, fn, request):
        """A chunk membership change (join, promote, abandon) at its
        current epoch."""
        ref = request.match_info['ref']
        idx = _path_int(request, 'idx')
        b = await _body(request)
        # Any server's: a primary rebuilding a chunk joins, promotes or
        # gives up its target, maybe on another host (chunkserver/
        # rebuild.py), as it drops a failed replica.
        chunk = await self.db(fn, ref, idx,
                              b.get('server_id', int, required=True),
                              b.get('epoch', int, required=True))
        return web.json_response({'chunk': chunk})

    async def join_replica(self, request):
        return await self._change_members(self.store.join_replica, request)

    async def promote_replica(self, request):
        return await self._change_members(self.store.promote_replica,
                                          request)

    async def abandon_join(self, request):
        return await self._change_members(self.store.abandon_join, request)

    async def acquire_lease(self, request):
        ref = request.match_info['ref']
        b = await _body(request)
        ttl = b.get('ttl', float, self.lease_ttl)
        if not 1 <= ttl <= 3600:
            raise exception.InvalidArgument(reason='ttl must be 1 to 3600 s')
        holder = b.get('holder', str, required=True)
        self._own_holder(request, holder)
        force = b.get('force', bool, False)
        # A live migration's destination asks the source for the lease:
        # only a host with a standby attachment of the volume may
        # (store.acquire_lease checks it, for every principal).
        handover = b.get('handover', bool, False)
        if force and request[PRINCIPAL][1] == 'host':
            # Taking a lease by force revokes another holder's, maybe on
            # another host: neither ursa-nbd nor ursa-attach does it.
            raise exception.Forbidden(
                reason='principal %r (role host) may not take a lease by '
                       'force: have the holder\'s lease revoked (the '
                       'Cinder driver\'s force detach, or "ursa host '
                       'fence" of the holder\'s host)'
                       % request[PRINCIPAL][0])
        await self._attached_here(request, ref)
        # Before the lease is taken: a volume (or a holder's host) no
        # ticket can hold gets no lease either.
        if len(store_mod.holder_host(holder).encode('utf-8')) > 255:
            raise exception.InvalidArgument(
                reason='the holder\'s host is longer than a ticket holds '
                       '(255 bytes of UTF-8): name the holder after a '
                       'shorter host name')
        _, readable = await self._readable(ref)
        lease = await self.service.acquire_lease(ref, holder, ttl, force,
                                                 handover)
        return web.json_response(
            {'lease': lease, 'ticket': self._lease_ticket(
                request, lease, readable)}, status=201)

    async def renew_lease(self, request):
        ref = request.match_info['ref']
        b = await _body(request)
        ttl = b.get('ttl', float, self.lease_ttl)
        if not 1 <= ttl <= 3600:
            raise exception.InvalidArgument(reason='ttl must be 1 to 3600 s')
        holder = b.get('holder', str, required=True)
        self._own_holder(request, holder)
        # Each renewal brings a fresh write ticket: a host detached from
        # the volume gets none (a multiattach volume's shared lease
        # outlives the detach, nothing else would stop it).
        await self._attached_here(request, ref)
        _, readable = await self._readable(ref)
        lease = await self.db(self.store.renew_lease, ref, holder,
                              b.get('generation', int, required=True), ttl)
        return web.json_response({'lease': lease, 'ticket': self._lease_ticket(
            request, lease, readable)})

    async def release_lease(self, request):
        ref = request.match_info['ref']
        holder = request.query.get('holder')
        if not holder:
            raise exception.InvalidArgument(reason='"holder" is required')
        self._own_holder(request, holder)
        await self.db(self.store.release_lease, ref, holder,
                      _int_query(request, 'generation'))
        return web.Response(status=204)

    async def revoke_lease(self, request):
        result = await self.service.revoke_lease(request.match_info['ref'])
        return web.json_response({'lease': result})

    async def lease_history(self, request):
        """The volume's lease events, oldest first (the newest ``limit``
        with ``?limit=``): see protocol/lease_history.py."""
        limit = None
        if 'limit' in request.query:
            limit = _int_query(request, 'limit')
            if limit < 1:
                raise exception.InvalidArgument(
                    reason='query parameter "limit" must be 1 or more (leave '
                           'it out for every event kept)')
        return web.json_response({'lease_history': await self.db(
            self.store.lease_history, request.match_info['ref'], limit)})

    # --- tickets (see protocol/tickets.py) ------------------------------

    async def _readable(self, ref):
        """(volume id, the other volumes a read of it may reach)."""
        return await self.db(self.store.readable_volumes, ref,
                             tickets.MAX_READABLE)

    def _issue(self, request, **fields):
        """A ticket for the requesting principal: its session key is
        wrapped with the key that signed the request, which the
        principal holds (a rotated principal's old key during its
        window, too)."""
        name, _, key = request[PRINCIPAL]
        if key is None:
            key = self.key          # a v1 signature: admin's, the cluster key
        return tickets.issue(self.key, key, principal=name, **fields)

    def _lease_ticket(self, request, lease, readable):
        """The ticket a lease's holder writes with: its generation, until
        the lease expires (and TICKET_CLOCK_SLACK); renewing the lease
        renews it."""
        return self._issue(
            request, volume=lease['volume_id'],
            generation=lease['generation'],
            expires=math.ceil(lease['expires_at']) + TICKET_CLOCK_SLACK,
            rights=tickets.RIGHT_READ | tickets.RIGHT_WRITE,
            readable=readable, host=store_mod.holder_host(lease['holder']))

    async def read_ticket(self, request):
        """A read-only ticket, bound to no lease (generation 0), for
        [ursa_master] ticket_ttl: it covers the volume's snapshots (read
        under the volume's id) and its clone parents.  A host principal
        gets one only for a volume attached to its host.  With
        ``copy_up`` (not for hosts; for a clone only), it may also copy
        blocks up from the parents, and write nothing else (the chunk
        servers refuse any other write under no lease): a flatten's."""
        ref = request.match_info['ref']
        b = await _body(request)    # may be empty; must be JSON if not
        copy_up = b.get('copy_up', bool, False)
        name, role, _ = request[PRINCIPAL]
        if copy_up and role == 'host':
            # A flatten's: the Cinder driver and admins flatten clones.
            raise exception.Forbidden(
                reason='principal %r (role host) may not have a copy-up '
                       'ticket: flattening a clone is the Cinder driver\'s '
                       'or an admin\'s' % name)
        await self._attached_here(request, ref)
        if copy_up and (await self.db(self.store.get_volume, ref))[
                'parent'] is None:
            # It would write, under no lease, blocks a volume in use
            # never wrote; a volume that reads no parent copies none up.
            raise exception.Conflict(
                reason='volume %s is not a clone (or was flattened): it '
                       'has nothing to copy up, so no copy-up ticket'
                       % ref)
        vid, readable = await self._readable(ref)
        ticket = self._issue(
            request, volume=vid, generation=0,
            expires=math.ceil(time.time() + self.ticket_ttl),
            rights=tickets.RIGHT_READ | (
                tickets.RIGHT_WRITE if copy_up else 0), readable=readable,
            host=name if role == 'host' else '')
        return web.json_response({'ticket': ticket}, status=201)

    async def show_host(self, request):
        return web.json_response({'host': await self.db(
            self.store.host_status, request.match_info['host'])})

    async def fence_host(self, request):
        b = await _body(request)
        result = await self.service.fence_host(request.match_info['host'],
                                               b.get('reason', str))
        return web.json_response({'fence': result})

    async def unfence_host(self, request):
        if not await self.service.unfence_host(request.match_info['host']):
            raise exception.NotFound(kind='fenced host',
                                     name=request.match_info['host'])
        return web.Response(status=204)

    async def host_heartbeat(self, request):
        """A client host's storage heartbeat (its nova-ha-agent's), kept
        in memory (see hostbeats): its answer says whether the host is
        fenced."""
        host = request.match_info['host']
        store_mod.check_text('host', host)
        b = await _body(request)
        interval = b.get('interval', float, required=True)
        if not 0 < interval <= hostbeats.MAX_INTERVAL:
            raise exception.InvalidArgument(
                reason='interval must be above 0 and at most %d s'
                % hostbeats.MAX_INTERVAL)
        stopping = b.get('stopping', bool, False)
        return web.json_response({'heartbeat': await self.service.
                                  host_heartbeat(host, interval, stopping)})

    async def host_heartbeats(self, request):
        """Every client host's storage heartbeat: how long ago it last
        beat, and how long this master has led (hosts are judged only
        once it has led longer than their timeout)."""
        return web.json_response(
            {'heartbeats': self.service.host_beats.status()})

    async def list_fenced_hosts(self, request):
        return web.json_response({'fenced_hosts': await self.db(
            self.store.list_fenced_hosts)})

    # --- principals (admin only: in no other role's routes) -----------------

    ROTATE_WINDOW_MAX = 7 * 86400

    @staticmethod
    def _new_key(request, b):
        """The key a key-management request carries, unwrapped with the
        key that signed it (auth.wrap_key)."""
        return auth.unwrap_key(request[PRINCIPAL][2],
                               b.get('key', str, required=True),
                               b.get('nonce', str, required=True))

    async def list_principals(self, request):
        return web.json_response({'principals': await self.db(
            self.store.list_principals)})

    async def create_principal(self, request):
        b = await _body(request)
        principal = await self.db(
            self.store.create_principal, b.get('name', str, required=True),
            b.get('role', str, required=True), self._new_key(request, b))
        self.principals.invalidate()
        LOG.info('Principal %s (role %s) created by %s', principal['name'],
                 principal['role'], request[PRINCIPAL][0])
        return web.json_response({'principal': principal}, status=201)

    async def rotate_principal(self, request):
        b = await _body(request)
        window = b.get('window', float, 3600.0)
        if not 0 <= window <= self.ROTATE_WINDOW_MAX:
            raise exception.InvalidArgument(
                reason='"window" must be 0 to %d s (the previous key stays '
                       'valid that long)' % self.ROTATE_WINDOW_MAX)
        principal = await self.db(
            self.store.rotate_principal, request.match_info['name'],
            self._new_key(request, b), window)
        self.principals.invalidate()
        LOG.info('Principal %s rotated by %s; its previous key is valid '
                 'for %d s more', principal['name'],
                 request[PRINCIPAL][0], window)
        return web.json_response({'principal': principal})

    async def revoke_principal(self, request):
        name = request.match_info['name']
        await self.db(self.store.revoke_principal, name)
        self.principals.invalidate()
        LOG.info('Principal %s revoked by %s', name,
                 request[PRINCIPAL][0])
        return web.Response(status=204)


def _path_int(request, name):
    try:
        number = int(request.match_info[name])
    except ValueError:
        raise exception.InvalidArgument(
            reason='%s must be an integer' % name) from None
    return _int64(number, name)

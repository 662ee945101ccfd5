"""ursa-nbd's server: exports Ursa volumes over NBD (fixed newstyle).

Life of a connection: the handshake (:mod:`handshake` decides every reply;
this module opens exports, lists them and starts TLS when it says so);
then transmission, where each request is validated
(``protocol.validate_request``) before it reaches the export's
:class:`~cinder_ursa.nbd.backend.Backend` and runs as its own task, so
replies go out in completion order.

Export names: a volume (name or id) is exported read-write under its lease;
``volume@snapshot`` is exported read-only and takes no lease.  TRIM and
WRITE_ZEROES deallocate whole blocks (the volume gets thinner); BLOCK_STATUS
reports the holes, so qemu-img, nbdcopy and nbdinfo --map see them, and
``qemu:dirty-bitmap:<snapshot>`` what changed after a snapshot
(:mod:`bitmaps`), as QEMU's own server reports a dirty bitmap.

All connections to one export share one open :class:`Volume` (one lease,
one dirty set) behind one :class:`VolumeBackend`, so a FLUSH on any
connection covers writes completed on every connection: that is what makes
CAN_MULTI_CONN safe to advertise.

Who may do what (security audit F3, F6-F8): NBD itself authenticates
nobody, so the gateway opens only volumes the master records as attached
to this host (``require_attachment``), lists exports only when told to
(``list_exports``), answers NBD_OPT_INFO from the master's volume record
without taking the write lease (50 probes used to make 50 lease
generations, each a FENCE and an fdatasync on every chunk server), and
bounds what a peer can hold: ``max_connections``, a handshake deadline,
and one budget of request data in flight shared by every connection.

Every local user of a hypervisor shares 127.0.0.1, so "attached to this
host" is not enough over TCP: a client the gateway cannot authenticate
otherwise must name the attachment's secret export token
(``VOLUME~TOKEN``, :func:`split_export`); the unix socket (its file mode
says who may connect) and TLS with a verified client certificate
authenticate the peer, and plain names work there.  An open session is
re-checked against the master every ``recheck_interval`` seconds and
ends once its volume is no longer attached to this host (detached, the
host fenced) or attached anew (a new token).
"""

import asyncio
import functools
import hmac
import logging
import socket
import ssl
import struct
import time
from time import perf_counter

from cinder_ursa import exception
from cinder_ursa.client import volume as volume_mod
from cinder_ursa.nbd import backend as backend_mod
from cinder_ursa.nbd import bitmaps as bitmaps_mod
from cinder_ursa.nbd import handshake as hs
from cinder_ursa.nbd import metrics as metrics_mod
from cinder_ursa.nbd import protocol as p
from cinder_ursa.nbd import stream as stream_mod

LOG = logging.getLogger(__name__)


BLOCK_STATUS_LIMIT = 1024 * 1024 * 1024  # bytes described per reply
# Requests of one connection in flight at once: past it, the gateway stops
# reading the connection until half are done.  Their data counts against
# the server's InflightBudget.
MAX_INFLIGHT = 256
INFLIGHT_BYTES = 256 * 1024 * 1024  # default budget of the whole server
HANDSHAKE_TIMEOUT = 10.0
MAX_CONNECTIONS = 256
# Options of one handshake that ask the master (INFO, GO, EXPORT_NAME,
# LIST, and LIST/SET_META_CONTEXT naming dirty bitmaps): past it the
# connection is closed.  Every lookup is a signed request to the master;
# an anonymous peer must not turn one connection into an unbounded stream
# of them (qemu and nbdinfo use 1 to 3).
MAX_LOOKUPS = 8
# Seconds between two checks that an open session's volume is still
# attached to this host.
RECHECK_INTERVAL = 5.0
# Between a volume (or volume@snapshot) and the attachment's export token
# in an export name: in no volume name (protocol.names), nor in a token
# (URL-safe base64).
TOKEN_SEP = '~'
# Attachment states in which this host may open the volume: the Cinder
# driver asked for it ('attaching') or ursa-attach reported it served.
ATTACHED = ('attaching', 'attached')
# Seconds a new connection to an export already open waits for the master
# to look the export up (and refresh its size); past that, a failover, it
# is served what is known.  An export not open yet waits for the master:
# opening it takes the volume's lease.
MASTER_WAIT = 2.0


class _HandshakeTimeout(Exception):
    """The client did not finish the handshake in time."""


class _TooManyLookups(Exception):
    """The client asked for more exports than MAX_LOOKUPS."""


def split_export(name):
    """(export, token or None) of an export name ``VOLUME~TOKEN`` (or
    ``VOLUME@SNAPSHOT~TOKEN``, or a plain name)."""
    base, sep, token = name.rpartition(TOKEN_SEP)
    return (base, token) if sep else (name, None)


def _token_matches(given, recorded):
    """Whether an export token given by a client is the attachment's
    (compared in constant time: a timing must not reveal a prefix)."""
    return bool(given) and bool(recorded) and hmac.compare_digest(
        given.encode(), recorded.encode())


class _Conn:
    """What the server keeps of one connection: its stream, whether it is
    still handshaking (the cap evicts the oldest such), the lookups it
    made, and what it opened (re-checked while the session lives)."""

    def __init__(self, stream):
        self.stream = stream
        self.handshaking = True
        self.evicted = False
        self.lookups = 0
        self.lookup_running = False  # the master asked for it now
        self.volume_id = None  # of the export opened
        self.token = None      # the export token it named, if any


class _Export:
    """An open export and the connections using it."""

    def __init__(self, key, volume, read_only):
        self.key = key
        self.backend = backend_mod.VolumeBackend(volume, read_only)
        self.users = 0
        # Export tokens the master confirmed for it: a client naming one
        # is served while no master answers (a failover).
        self.tokens = set()


class InflightBudget:
    """Bytes of request data in flight, shared by every connection of a
    server (security audit F7: each greedy connection could hold 256 MiB
    of its own).  READ and WRITE count their length; WRITE_ZEROES and
    TRIM count what writing allocated zeros holds at once (up to
    ``backend.ZERO_PIECE``), as they may do that.

    A connection stops reading requests while its own data reaches
    ``per_connection`` (a quarter of the total: one client cannot starve
    the others) or the server's reaches ``total``; it resumes when its own
    is below half of ``per_connection`` and the server's below three
    quarters of ``total``.  Connections held by the server's total wait
    in ``waiting`` and are woken as data is settled.
    """

    def __init__(self, total=INFLIGHT_BYTES):
        self.total = total
        self.per_connection = max(total // 4, 1)
        self.used = 0
        self.peak = 0
        self.waiting = set()  # callables: re-check and maybe resume
        self._waking = False

    def take(self, n):
        self.used += n
        if self.used > self.peak:
            self.peak = self.used

    def give(self, n):
        self.used -= n
        self._wake()

    def reserve(self, n):
        """Count ``n`` bytes of a WRITE's payload buffer, made as its
        header arrives (NbdStream._admit), if the budget has room for
        them (always when nothing is in flight: one request of any size
        goes through); False otherwise."""
        if self.used and self.used + n > self.total:
            return False
        self.take(n)
        return True

    def release(self, n):
        """Give back what :meth:`reserve` counted.  Called as requests
        are handed over, from inside a stream's parsing: the waiting
        connections are woken from the loop, not from here (one woken
        connection's parsing would release and wake the next, nested).
        """
        self.used -= n
        if self.waiting and not self._waking:
            self._waking = True
            asyncio.get_running_loop().call_soon(self._woken)

    def _woken(self):
        self._waking = False
        self._wake()

    def _wake(self):
        if self.waiting and self.used < self.total * 3 // 4:
            for check in list(self.waiting):
                check()

    def full(self):
        return self.used >= self.total

    def roomy(self):
        return self.used < self.total * 3 // 4


def request_cost(cmd, length):
    """Bytes a request counts against the in-flight budget."""
    if cmd in (p.CMD_READ, p.CMD_WRITE):
        return length
    if cmd in (p.CMD_WRITE_ZEROES, p.CMD_TRIM):
        return min(length, backend_mod.ZERO_PIECE)
    return 0


class _Throttled:
    """A warning logged at most once per ``interval`` seconds, with the
    number of times it happened meanwhile: an unauthenticated peer must
    not be able to flood the log."""

    def __init__(self, interval=60.0):
        self.interval = interval
        self._last = None
        self._count = 0

    def __call__(self, msg, *args):
        self._count += 1
        now = time.monotonic()
        if self._last is None or now - self._last >= self.interval:
            LOG.warning(msg + ' (%d time(s) since the last such message)',
                        *args, self._count)
            self._last, self._count = now, 0


def cert_names(cert):
    """The names a verified certificate (``getpeercert()``) carries: its
    subject's common names and its DNS subjectAltNames."""
    names = {value for rdn in cert.get('subject', ()) for key, value in rdn
             if key == 'commonName'}
    names.update(value for key, value in cert.get('subjectAltName', ())
                 if key == 'DNS')
    return names


def tls_context(cert_file, key_file, ca_file=None):
    """Server-side TLS context for STARTTLS (client certificates are
    required when ``ca_file`` is given)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    if ca_file:
        ctx.load_verify_locations(ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class NbdServer:
    """Serves NBD clients with volumes of ``cluster`` (an async Cluster)."""

    def __init__(self, cluster, read_only=False, holder=None,
                 tls_context=None, tls_required=False, host=None,
                 require_attachment=False, list_exports=True,
                 handshake_timeout=HANDSHAKE_TIMEOUT,
                 max_connections=MAX_CONNECTIONS,
                 inflight_bytes=INFLIGHT_BYTES,
                 recheck_interval=RECHECK_INTERVAL, tls_client_names=(),
                 metrics=None):
        """``host``: this host's name in the master's attachments; with
        ``require_attachment`` only volumes attached to it are served.
        ``tls_client_names``: see :meth:`_trusted`.  ``metrics``: an
        :class:`~cinder_ursa.nbd.metrics.NbdMetrics` (one of its own by
        default; :meth:`register_metrics` exposes it).
        (The defaults here are the library's; ursa-nbd passes its
        options, whose defaults are the safe ones.)"""
        self.cluster = cluster
        self.read_only = read_only
        self.tls_context = tls_context
        self.tls_required = tls_required and tls_context is not None
        self.holder = holder
        self.host = host
        self.tls_client_names = list(tls_client_names)
        self.require_attachment = require_attachment
        if require_attachment and not host:
            raise ValueError('require_attachment needs this host\'s name')
        self.list_exports = list_exports
        self.handshake_timeout = handshake_timeout
        self.max_connections = max_connections
        self.budget = InflightBudget(inflight_bytes)
        self._exports = {}
        self._lock = asyncio.Lock()
        self.recheck_interval = recheck_interval
        # task -> _Conn, oldest first (the cap evicts from the front).
        self.connections = {}
        self._warn_full = _Throttled()
        self._warn_slow = _Throttled()
        self._warn_evicted = _Throttled()
        # Refusals are a probe's doing as often as a mistake: aggregated,
        # one line a minute at most.
        self._warn_refused = _Throttled()
        self._warn_lookups = _Throttled()
        self._warn_unlisted = _Throttled()
        self.metrics = metrics or metrics_mod.NbdMetrics()

    def register_metrics(self, pm):
        """Expose this server's metrics in ``pm`` (a ProcessMetrics)."""
        self.metrics.register(pm, self)

    def exports(self):
        """The backends of the exports open now."""
        return [exp.backend for exp in self._exports.values()]

    # --- exports -----------------------------------------------------------

    def _known(self, name):
        """The export open under ``name`` (a volume's name or id, or
        ``volume@snapshot``; no token), if any."""
        for exp in self._exports.values():
            vol = exp.backend.volume
            if name == vol.name or (exp.key[0] == 'volume' and
                                    name == vol.id):
                return exp
        return None

    async def _master(self, call, known):
        """The answer of ``call`` (a coroutine asking the master).  When
        the export is open already (``known``), waited for MASTER_WAIT at
        most: None when no master answered by then (a failover: the
        export needs none to serve its connections, nor a new one)."""
        if known is None:
            return await call
        try:
            return await asyncio.wait_for(call, MASTER_WAIT)
        except (TimeoutError, exception.NotLeader,
                exception.UrsaConnectionError) as e:
            LOG.warning('NBD export %s: no master answered (%s); a new '
                        'connection is served what is known', known.key,
                        str(e) or 'no answer in %.1f s' % MASTER_WAIT)
            return None

    def _refuse_anonymous(self, name):
        """NotFound for a client that names no export token and is not
        authenticated by its transport (see the module's docstring)."""
        raise exception.NotFound(
            kind='export', name='%s for a client without credentials: over '
            'TCP without a TLS client certificate, name the attachment\'s '
            'export token (VOLUME%sTOKEN, as "ursa attachment list" shows '
            'it) or connect to the unix socket ([ursa_nbd] unix_socket)'
            % (name, TOKEN_SEP))

    async def _record(self, name, token, trusted):
        """The master's record of export ``name`` (a volume, or a
        snapshot when ``@`` is in the name), checked against this host's
        attachments (and ``token``: required unless the peer is
        ``trusted``); None when the export is open already and no master
        answered (see :meth:`_master`)."""
        if self.require_attachment and token is None and not trusted:
            # No master request for a peer that could open nothing.
            self._refuse_anonymous(name)
        snapshot = '@' in name
        known = self._known(name)
        record = await self._master(
            self.cluster.master.snapshot(name) if snapshot
            else self.cluster.master.volume(name), known)
        if record is None:
            if self.require_attachment and token is not None and \
                    token not in known.tokens:
                raise exception.Unavailable(
                    reason='no master answers to check the export token '
                           'of %s; try again' % name)
            return None
        if self.require_attachment:
            await self._check_attached(
                record['volume_id'] if snapshot else record['id'],
                record.get('volume_name', record['name']), token)
        return record

    def _attached(self, atts, token):
        """Whether ``atts`` (attachments of one volume) hold one of this
        host that may be served, with ``token`` when one was named."""
        return any(a['host'] == self.host and a['status'] in ATTACHED and
                   (token is None or
                    _token_matches(token, a.get('export_token')))
                   for a in atts)

    async def _check_attached(self, volume_id, volume_name, token=None):
        """Raise NotFound unless the master records the volume as
        attached to this host (Cinder's initialize_connection for this
        host made it so), under ``token`` when one is given.  A snapshot
        counts as attached with its volume."""
        atts = await self.cluster.master.attachments(volume_id, self.host)
        if not self._attached(atts, token):
            raise exception.NotFound(
                kind='attachment', name='of volume %s to host %s%s '
                '([ursa_nbd] require_attachment: attach it to this host '
                'first)' % (volume_name, self.host,
                            '' if token is None else ' with that token'))

    async def _describe(self, record, name):
        """(size, transmission flags) of export ``name`` for NBD_OPT_INFO,
        from the master's ``record``: the volume is neither opened nor
        leased (security audit F8)."""
        if record is None:  # no master; the export is open here
            known = self._known(name)
            if known is None:
                return None
            return known.backend.size(), known.backend.flags()
        read_only = self.read_only or '@' in name
        # A VolumeBackend's flags depend on read_only alone.
        return (record['size'],
                backend_mod.VolumeBackend(None, read_only).flags())

    async def _open(self, name, record, token=None):
        """Open export ``name`` whose ``record`` :meth:`_record` returned
        (and checked)."""
        snapshot = '@' in name
        async with self._lock:
            if record is None:
                exp = self._known(name)
                if exp is None:
                    raise exception.Unavailable(
                        reason='no master answers, and export %s was '
                               'closed meanwhile' % name)
            elif snapshot:
                key = ('snapshot', record['id'])
                exp = self._exports.get(key)
                if exp is None:
                    vol = volume_mod.Volume.for_snapshot(self.cluster,
                                                         record)
                    exp = self._exports[key] = _Export(key, vol, True)
            else:
                key = ('volume', record['id'])
                exp = self._exports.get(key)
                if exp is None:
                    vol = await self.cluster.open_volume(
                        key[1], writable=not self.read_only,
                        holder=self.holder)
                    exp = self._exports[key] = _Export(key, vol,
                                                       self.read_only)
                else:
                    # A grown volume shows its new size to new clients.
                    exp.backend.volume.adopt(record)
            if record is not None and token is not None:
                exp.tokens.add(token)
            exp.users += 1
            return exp

    async def _close(self, exp):
        async with self._lock:
            exp.users -= 1
            if exp.users == 0:
                self._exports.pop(exp.key, None)
                self.metrics.closed(exp.backend)
                await exp.backend.close()

    # --- connection --------------------------------------------------------

    def protocol(self):
        """Protocol factory for loop.create_server/create_unix_server."""
        return stream_mod.NbdStream(self._serve)

    def _make_room(self, peer):
        """At max_connections: evict the oldest connection still
        handshaking (told nothing: closed) so idle strangers cannot lock
        clients out; True if there was one.  Served clients are never
        evicted."""
        live = [c for c in self.connections.values() if not c.evicted]
        if len(live) < self.max_connections:
            return True
        # Idle handshakes first: one waiting for the gateway's lookup
        # at the master asked for an export (a client at work; a flood
        # of idle strangers evicted those as soon as they were oldest).
        shaking = [c for c in live if c.handshaking]
        for c in sorted(shaking, key=lambda c: c.lookup_running):
            if c.handshaking:
                c.evicted = True
                c.stream.close()
                self._warn_evicted(
                    'NBD: %d connections ([ursa_nbd] max_connections): the '
                    'oldest one still handshaking was closed for %s',
                    len(live), peer)
                return True
        return False

    def _trusted(self, stream):
        """Whether the transport authenticated the peer: the unix socket
        (its mode and group say who may connect) or TLS with a client
        certificate the CA verified (a server context without tls_ca_file
        asks for none, so getpeercert() is empty) that names one of
        ``tls_client_names`` (this host by default)."""
        check = getattr(stream, 'authenticated', None)
        if check is not None:
            return check()
        transport = stream.transport
        sock = transport.get_extra_info('socket')
        if sock is not None and sock.family == socket.AF_UNIX:
            return True
        cert = transport.get_extra_info('peercert')
        if not cert:
            return False
        names = self.tls_client_names or ([self.host] if self.host else [])
        return '*' in names or bool(set(names) & cert_names(cert))

    async def _serve(self, stream):
        peer = stream.transport.get_extra_info('peername') or 'unix socket'
        if not self._make_room(peer):
            # Closed before the greeting: the client sees the connection
            # end (nbdinfo: "recv: Connection reset by peer" or EOF).
            self.metrics.handshake('refused')
            self._warn_full('NBD client %s refused: %d connections already '
                            'served ([ursa_nbd] max_connections)', peer,
                            len(self.connections))
            stream.close()
            return
        task = asyncio.current_task()
        conn = self.connections[task] = _Conn(stream)
        exp = watch = None
        result = 'failed'  # of the handshake, unless it ends otherwise
        try:
            neg = hs.Negotiation(tls_available=self.tls_context is not None,
                                 tls_required=self.tls_required)
            exp = await self._handshake(stream, neg, conn)
            conn.handshaking = False
            self.metrics.handshake(
                'refused' if exp is None and neg.refusals else 'ok')
            if exp is not None:
                LOG.info('NBD client %s attached to %s%s', peer,
                         exp.backend.name,
                         '' if exp.backend.can_write() else ' (read-only)')
                if self.require_attachment and conn.volume_id:
                    watch = asyncio.get_running_loop().create_task(
                        self._watch(stream, conn, exp, peer))
                await self._transmission(stream, exp, neg)
        except (asyncio.IncompleteReadError, ConnectionError):
            LOG.debug('NBD client %s went away', peer)
        except _HandshakeTimeout:
            self._warn_slow('NBD client %s dropped: no handshake within '
                            '%g s ([ursa_nbd] handshake_timeout, the '
                            'gateway\'s lookups included)', peer,
                            self.handshake_timeout)
        except _TooManyLookups:
            self._warn_lookups('NBD client %s dropped: more than %d exports '
                               'asked for in one handshake', peer,
                               MAX_LOOKUPS)
        except ssl.SSLError as e:
            result = 'refused'
            LOG.warning('TLS with NBD client %s failed: %s', peer, e)
        except exception.ProtocolError as e:
            LOG.warning('Dropping NBD client %s: %s', peer, e)
        finally:
            if conn.handshaking:
                self.metrics.handshake(result)
            if watch is not None:
                watch.cancel()
            self.connections.pop(task, None)
            if exp is not None:
                try:
                    await self._close(exp)
                except exception.UrsaError as e:
                    LOG.warning('Closing volume %s: %s', exp.backend.name, e)
            stream.close()

    async def _watch(self, stream, conn, exp, peer):
        """Every recheck_interval, ask the master whether the session's
        volume is still attached to this host (under the token the client
        named, if any); end the session when it is not: detached, the
        host fenced (fencing drops its attachments), or attached anew.
        No answer from the master (a failover) ends nothing: the lease
        still guards the writes."""
        while True:
            await asyncio.sleep(self.recheck_interval)
            try:
                atts = await self.cluster.master.attachments(
                    conn.volume_id, self.host)
            except exception.NotFound:
                atts = []  # the volume is gone
            except exception.UrsaError as e:
                LOG.debug('NBD session of %s on %s: attachment not '
                          'checked (%s)', peer, exp.backend.name, e)
                continue
            except Exception as e:  # noqa: BLE001 - the watch goes on
                # A reply the client could not read (a proxy's HTML
                # page, say) ended the watch, silently, and with it
                # every later check of the session: kept for good.
                LOG.warning('NBD session of %s on %s: attachment not '
                            'checked (%r); checked again in %g s', peer,
                            exp.backend.name, e, self.recheck_interval)
                continue
            if self._attached(atts, conn.token):
                continue
            LOG.warning('NBD client %s: volume %s is no longer attached to '
                        'host %s; its session ends', peer, exp.backend.name,
                        self.host)
            exp.tokens.discard(conn.token)
            # Aborted, not closed: a close waits for the client to read
            # what is queued, and requests received meanwhile would
            # still be served once a hold ends.
            stream.abort()
            return

    async def _handshake(self, stream, neg, conn=None):
        """Run the negotiation; return the export chosen, or None.

        The whole handshake must end within ``handshake_timeout`` seconds
        of the connection, the time the gateway spends asking the master
        included (a client could otherwise stretch it without end with
        options that make lookups), and at most MAX_LOOKUPS options may
        ask the master."""
        conn = conn or _Conn(stream)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.handshake_timeout

        async def client(aw):
            try:
                async with asyncio.timeout_at(deadline):
                    return await aw
            except TimeoutError:
                raise _HandshakeTimeout() from None

        follows = None  # the export whose dirty bitmaps come free next

        def lookup(export=None, bitmaps=False):
            """Count an option that asks the master.  The dirty bitmaps
            of the export the option before looked up count with it
            (nbdinfo describes an export, then lists its contexts): at
            most one such option per counted one."""
            nonlocal follows
            if bitmaps and export is not None and export == follows:
                follows = None
                return
            follows = None if bitmaps else export
            conn.lookups += 1
            if conn.lookups > MAX_LOOKUPS:
                raise _TooManyLookups()

        exp = None
        stream.write(neg.greeting())
        await client(stream.drain())
        while True:
            out, event = neg.receive(await client(
                stream.readexactly(neg.want)))
            if isinstance(event, hs.OpenExport):
                lookup(event.name)
                name, token = split_export(event.name)
                trusted = self._trusted(stream)
                conn.lookup_running = True
                try:
                    record = await client(self._record(name, token,
                                                       trusted))
                    if event.option == p.OPT_INFO:
                        info = await self._describe(record, name)
                    else:
                        # Opening (the lease) is bounded by the cluster's
                        # request timeout, not cut off halfway.
                        exp = await self._open(name, record, token)
                        info = exp.backend.size(), exp.backend.flags()
                        conn.token = token
                        # The volume whose attachments the session is
                        # re-checked against.  Found open with no master
                        # answering: the view's, which for a snapshot
                        # is its volume's (Volume.for_snapshot).
                        if record is not None:
                            conn.volume_id = (record['volume_id']
                                              if '@' in name
                                              else record['id'])
                        else:
                            conn.volume_id = exp.backend.volume.id
                except exception.UrsaError as e:
                    # The token never goes to the log.  Every refusal
                    # at DEBUG; a WARNING a minute at most (probes).
                    LOG.debug('NBD export %r refused: %s', name, e)
                    self._warn_refused('NBD export %r refused: %s', name, e)
                    info = None
                finally:
                    conn.lookup_running = False
                out, event = (neg.export_refused() if info is None
                              else neg.export_opened(*info))
            elif isinstance(event, hs.ListExports):
                lookup()
                conn.lookup_running = True
                try:
                    out = await client(self._list(neg,
                                                  self._trusted(stream)))
                finally:
                    conn.lookup_running = False
            elif isinstance(event, hs.ListBitmaps):
                lookup(event.name, bitmaps=True)
                conn.lookup_running = True
                try:
                    out = await client(self._list_bitmaps(
                        neg, event, self._trusted(stream)))
                finally:
                    conn.lookup_running = False
            if out:
                stream.write(out)
            if isinstance(event, hs.Ready):
                return exp  # transmission's flow control takes over
            await client(stream.drain())
            if isinstance(event, hs.StartTls):
                await client(stream.start_tls(
                    self.tls_context,
                    max(deadline - loop.time(), 0.001)))
                neg.tls_started()
            elif isinstance(event, hs.Close):
                LOG.debug('NBD handshake ends: %s', event.reason)
                return None

    async def _list(self, neg, trusted=True):
        """The reply to NBD_OPT_LIST: the exports this client could open
        (with require_attachment, the volumes attached to this host, and
        to a client without credentials none: it could open one only
        under its token), or NBD_REP_ERR_POLICY when listing is off."""
        if not self.list_exports:
            return neg.exports_unlisted(
                'this server does not list its exports ([ursa_nbd] '
                'list_exports); ask for a volume by name')
        if self.require_attachment and not trusted:
            return neg.exports_unlisted(
                'exports are listed only on the unix socket or to a TLS '
                'client certificate; ask for VOLUME%sTOKEN' % TOKEN_SEP)
        try:
            if self.require_attachment:
                atts = await self.cluster.master.attachments(
                    host=self.host)
                names = sorted({a['volume_name'] for a in atts
                                if a['status'] in ATTACHED})
            else:
                names = [v['name'] for v in
                         await self.cluster.master.volumes()]
        except exception.UrsaError as e:
            LOG.warning('NBD export list refused: %s', e)
            return neg.exports_unlisted(
                'the exports cannot be listed now: %s' % e)
        return neg.exports_listed(names)

    async def _list_bitmaps(self, neg, event, trusted):
        """The reply to LIST/SET_META_CONTEXT queries naming dirty bitmaps
        of export ``event.name`` (a :class:`handshake.ListBitmaps`): those
        its volume's snapshots give (:func:`bitmaps.offered`).  An export
        this client could not open offers none (a probe learns nothing
        more); no master answering is an error the client may retry."""
        name, token = split_export(event.name)
        try:
            record = await self._record(name, token, trusted)
            if record is None:
                raise exception.Unavailable(reason='no master answers')
            snapshot_export = '@' in name
            volume_id = record['volume_id'] if snapshot_export \
                else record['id']
            if event.every:
                snaps = await self._all_snapshots(volume_id)
            else:
                snaps = await self._snapshots_named(volume_id, event.names)
        except (exception.NotFound, exception.Forbidden,
                exception.InvalidArgument) as e:
            LOG.debug('NBD export %r offers no dirty bitmaps: %s', name, e)
            return neg.bitmaps_listed({})
        except exception.UrsaError as e:
            LOG.warning('NBD export %r: dirty bitmaps not listed: %s',
                        name, e)
            return neg.bitmaps_unlisted(
                'the snapshots of %s cannot be listed now (%s); try again'
                % (name, e))
        return neg.bitmaps_listed(bitmaps_mod.offered(record, snaps,
                                                      snapshot_export))

    async def _all_snapshots(self, volume_id):
        """The snapshots of a volume, for a LIST of every dirty bitmap;
        none where this gateway's principal may not list them (the
        names asked for one by one are still found)."""
        try:
            return await self.cluster.master.snapshots(volume_id)
        except exception.Forbidden as e:
            self._warn_unlisted(
                'NBD: the snapshots of volume %s cannot be listed, so '
                'NBD_OPT_LIST_META_CONTEXT shows no qemu:dirty-bitmap: '
                'context (SET_META_CONTEXT by name works): %s',
                volume_id, e)
            return []

    async def _snapshots_named(self, volume_id, names):
        """The snapshots of a volume that ``names`` name, those that
        exist (asked for one by one: at most
        handshake.MAX_BITMAP_NAMES)."""
        out = []
        for leaf in names:
            if '/' in leaf:
                continue  # in no name the master takes
            try:
                out.append(await self.cluster.master.snapshot(
                    '%s@%s' % (volume_id, leaf)))
            except exception.NotFound:
                pass
        return out

    # --- transmission ------------------------------------------------------

    def _contexts(self, backend, neg):
        """[(id, extents(offset, length))] of the metadata contexts the
        client selected, by id."""
        out = []
        for c in neg.contexts:
            if c.bitmap is None:
                out.append((c.id, backend.extents))
            else:
                out.append((c.id, bitmaps_mod.DirtyBitmap(
                    self.cluster.master, backend, c.bitmap,
                    c.name).extents))
        return out

    async def _block_status(self, contexts, flags, handle, offset, length):
        """The reply to NBD_CMD_BLOCK_STATUS: one chunk per context, the
        last one DONE.  Lengths are capped at BLOCK_STATUS_LIMIT; with
        REQ_ONE each chunk holds one extent.  One context failing fails
        the request (nothing is sent before all are known)."""
        length = min(length, BLOCK_STATUS_LIMIT)
        found = await asyncio.gather(*(extents(offset, length)
                                       for _, extents in contexts))
        last = len(contexts) - 1
        return b''.join(
            p.structured(handle, p.REPLY_TYPE_BLOCK_STATUS,
                         p.block_status_payload(
                             extents[:1] if flags & p.CMD_FLAG_REQ_ONE
                             else extents, cid), done=i == last)
            for i, ((cid, _), extents) in enumerate(zip(contexts, found,
                                                        strict=True)))

    async def _transmission(self, stream, exp, neg):
        """Requests run as they arrive (replies go out in completion order),
        at most MAX_INFLIGHT of them, and data within the server's
        :class:`InflightBudget`.  A write the backend can start without a
        task (``pwrite_nowait``: one request to a chunk server) runs on
        callbacks, the others as tasks.

        A request's bytes count until its reply has left: a READ's data
        sits in the transport's buffer while the client does not read
        (a client that sent READs and read nothing made the gateway hold
        710 MB against a 256 MiB budget when they were given back as the
        reply was queued).  Settled bytes stay counted as long as the
        stream holds that many unsent (:meth:`NbdStream.unsent`), and are
        given back as it drains."""
        backend = exp.backend
        eflags = backend.flags() | (p.TF_SEND_DF if neg.structured else 0)
        structured = neg.structured
        contexts = self._contexts(backend, neg)
        loop = asyncio.get_running_loop()
        budget = self.budget
        m = self.metrics
        ops = m.ops
        tasks = {}
        inflight = 0        # requests
        inflight_bytes = 0  # their data, and replies not sent yet
        sending = 0         # of it: settled, their reply not sent yet
        callbacks = 0       # writes running on callbacks
        ended = None        # set when the last of those ends, at the end
        held = False

        def check():
            """Resume taking requests if this connection and the server
            have room again (also called by the budget)."""
            nonlocal held
            if held and inflight < MAX_INFLIGHT // 2 and \
                    inflight_bytes < budget.per_connection // 2 and \
                    budget.roomy():
                held = False
                budget.waiting.discard(check)
                stream.hold(False)

        def release_sent():
            """Give back what of ``sending`` the stream does not hold."""
            nonlocal sending, inflight_bytes
            if sending:
                gone = sending - stream.unsent()
                if gone > 0:
                    sending -= gone
                    inflight_bytes -= gone
                    budget.give(gone)

        def drained():
            release_sent()
            check()

        def settle(n):
            nonlocal inflight, sending
            inflight -= 1
            m.in_flight -= 1
            sending += n
            release_sent()
            check()

        def finished(task):
            settle(tasks.pop(task, 0))

        def wrote(handle, flags, offset, length, t0, err):
            nonlocal callbacks
            if err is None:
                stream.write(p.simple_reply(handle))
                backend.written_bytes += length
                ops.done('write', perf_counter() - t0, length)
            else:
                self._failed(stream, backend, structured, p.CMD_WRITE, flags,
                             handle, offset, length, err)
                self._count_error(backend, p.CMD_WRITE, t0, err)
            settle(length)
            callbacks -= 1
            if not callbacks and ended is not None and not ended.done():
                ended.set_result(None)

        def on_request(flags, cmd, handle, offset, length, data):
            nonlocal inflight, inflight_bytes, callbacks
            t0 = perf_counter()  # the request's latency runs from here
            if cmd == p.CMD_DISC:
                stream.stop()
                return
            err = p.validate_request(cmd, flags, offset, length,
                                     backend.size(), eflags, structured,
                                     bool(contexts))
            if err:
                stream.write(p.error_reply(handle, err, structured))
                m.refused(cmd, err, perf_counter() - t0)
                return
            n = request_cost(cmd, length)
            if cmd == p.CMD_WRITE and backend.pwrite_nowait(
                    offset, data, bool(flags & p.CMD_FLAG_FUA),
                    functools.partial(wrote, handle, flags, offset,
                                      length, t0)):
                callbacks += 1
            else:
                t = loop.create_task(self._run(
                    stream, backend, structured, cmd, flags, handle, offset,
                    length, data, t0, contexts))
                tasks[t] = n
                t.add_done_callback(finished)
            inflight += 1
            m.in_flight += 1
            inflight_bytes += n
            budget.take(n)
            if not held and (inflight >= MAX_INFLIGHT or
                             inflight_bytes >= budget.per_connection or
                             budget.full()):
                hold()

        def hold():
            nonlocal held
            held = True
            budget.waiting.add(check)
            stream.hold(True)

        stream.on_drain = drained
        stream.budget = budget
        try:
            await stream.serve_requests(on_request)
        finally:
            budget.waiting.discard(check)
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if callbacks:
                ended = loop.create_future()
                await ended
            stream.on_drain = None
            budget.give(sending)  # the connection's buffer goes with it
            sending = 0
            if backend.can_write():
                try:
                    await backend.flush()
                except exception.UrsaError as e:
                    LOG.warning('Flush at disconnect of %s: %s',
                                backend.name, e)

    @staticmethod
    def _failed(stream, backend, structured, cmd, flags, handle, offset,
                length, e):
        """Answer a request that failed with ``e``."""
        err = p.nbd_error(e, flags)
        if err == p.NBD_ENOTSUP:
            LOG.debug('NBD command %d on %s at %d+%d: %s', cmd,
                      backend.name, offset, length, e)
        elif isinstance(e, exception.UrsaError):
            LOG.warning('NBD command %d on %s at %d+%d failed: %s',
                        cmd, backend.name, offset, length, e)
        else:
            LOG.error('NBD command %d on %s at %d+%d failed: %r', cmd,
                      backend.name, offset, length, e, exc_info=e)
        stream.write(p.error_reply(handle, err, structured, str(e)))

    def _count_error(self, backend, cmd, t0, e):
        """Count request ``cmd`` (started at ``t0``) that failed with
        ``e``, and a fence it reveals."""
        self.metrics.ops.done(metrics_mod.OP_NAMES[cmd], perf_counter() - t0,
                              0, e)
        if metrics_mod.is_fence(e):
            self.metrics.note_fenced(backend)

    async def _run(self, stream, backend, structured, cmd, flags, handle,
                   offset, length, data, t0, contexts=()):
        """Run a valid request and answer it; it is counted once its
        reply is queued (latency from ``t0``, when it was parsed).
        ``contexts``: see :meth:`_contexts`."""
        fua = bool(flags & p.CMD_FLAG_FUA)
        try:
            if cmd == p.CMD_READ:
                out = await backend.pread(offset, length)
                if structured:
                    stream.writelines((p.structured_header(
                        handle, p.REPLY_TYPE_OFFSET_DATA, 8 + len(out)),
                        struct.pack('>Q', offset), out))
                else:
                    stream.writelines((p.simple_reply(handle), out))
                backend.read_bytes += length
                self.metrics.ops.done('read', perf_counter() - t0, length)
                return
            if cmd == p.CMD_BLOCK_STATUS:
                stream.write(await self._block_status(
                    contexts, flags, handle, offset, length))
                self.metrics.ops.done('block_status', perf_counter() - t0)
                return
            if cmd == p.CMD_WRITE:
                await backend.pwrite(offset, data, fua)
                backend.written_bytes += length
            elif cmd == p.CMD_TRIM:
                await backend.trim(offset, length, fua)
            elif cmd == p.CMD_WRITE_ZEROES:
                await backend.zero(offset, length, fua,
                                   not flags & p.CMD_FLAG_NO_HOLE,
                                   bool(flags & p.CMD_FLAG_FAST_ZERO))
            elif cmd == p.CMD_FLUSH:
                await backend.flush()
            elif cmd == p.CMD_CACHE:
                await backend.cache(offset, length)
            stream.write(p.simple_reply(handle))
            self.metrics.ops.done(
                metrics_mod.OP_NAMES[cmd], perf_counter() - t0,
                length if cmd in metrics_mod.SIZED else 0)
        except Exception as e:  # noqa: BLE001 - every request is answered
            self._failed(stream, backend, structured, cmd, flags, handle,
                         offset, length, e)
            self._count_error(backend, cmd, t0, e)

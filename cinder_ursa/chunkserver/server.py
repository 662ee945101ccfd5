"""The chunk server: its life cycle, the dispatch of requests (held
behind a confirmation by the master when they need one, see :mod:`.gate`)
and reads.  Its other parts: the write path and its forwarding to the
other replicas (:mod:`.replication`), membership, control requests and
syncs (:mod:`.controlplane`), REPAIR (:mod:`.repair`), REBUILD
(:mod:`.rebuild`), RESYNC, the resync after a crash (:mod:`.resync`), and
the scrub (:mod:`.scrub`).  Its Prometheus metrics: :mod:`.metrics`.
"""

import asyncio
import logging
import resource
import socket
import weakref

from cinder_ursa import exception
from cinder_ursa.chunkserver import authority as authority_mod
from cinder_ursa.chunkserver import controlplane
from cinder_ursa.chunkserver import diskhealth
from cinder_ursa.chunkserver import gate as gate_mod
from cinder_ursa.chunkserver import latency as latency_mod
from cinder_ursa.chunkserver import metrics as metrics_mod
from cinder_ursa.chunkserver import rebuild
from cinder_ursa.chunkserver import repair
from cinder_ursa.chunkserver import replication
from cinder_ursa.chunkserver import resync
from cinder_ursa.chunkserver import scrub
from cinder_ursa.chunkserver import store as store_mod
from cinder_ursa.chunkserver import throttle
from cinder_ursa.client import master as master_mod
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import control
from cinder_ursa.protocol.chunkfile import BLOCK
from cinder_ursa.transport import aio
from cinder_ursa.transport import limits as limits_mod
from cinder_ursa.transport import metrics as common_metrics

LOG = logging.getLogger(__name__)

# The data path's share of the metrics (see metrics.py), looked up once.
_clock = metrics_mod.clock
_COUNTED = metrics_mod.OP_OF


class ChunkServer(controlplane.ControlMixin, replication.ReplicationMixin,
                  repair.RepairMixin, rebuild.RebuildMixin,
                  resync.ResyncMixin, scrub.ScrubMixin,
                  scrub.LightScrubMixin):

    def __init__(self, data_dir, key, master_urls, bind_host='127.0.0.1',
                 bind_port=0, advertise_host=None, host=None, rack='default',
                 replication_timeout=5.0, reserved_bytes=0,
                 recovery_rate=(0, 0), disk_error_limit=5,
                 disk_error_window=60.0, scrub_interval=0.0,
                 light_scrub_interval=0.0, scrub_error_limit=0,
                 liveness_timeout=3.0, limits=None, tls=None,
                 metrics_host='127.0.0.1', metrics_port=0, smart=None):
        self.disk = diskhealth.DiskHealth(disk_error_limit,
                                          disk_error_window)
        self.store = store_mod.ChunkStore(data_dir, reserved_bytes)
        self.key = key
        self.master = master_mod.AsyncMasterClient(master_urls, key,
                                                   timeout=10.0)
        # Confirmations hold a chunk's requests: they wait no longer than
        # a replica would.
        self.authority = authority_mod.Authority(
            master_mod.AsyncMasterClient(
                master_urls, key, timeout=max(replication_timeout, 1.0)),
            self.store)
        self.gate = gate_mod.Gate(self._serve_item, dropped=self._unserved)
        self.throttle = throttle.Throttle(*recovery_rate)
        self.bind_host = bind_host
        self.bind_port = bind_port
        self.advertise_host = advertise_host or bind_host
        self.host = host or socket.gethostname()
        self.rack = rack
        self.replication_timeout = replication_timeout
        self.peers = aio.ConnectionPool(
            key, connect_timeout=min(replication_timeout, 3.0),
            liveness=liveness_timeout)
        # What its connections may cost (see transport/limits.py).
        # The server TLS context of the data protocol (None: plain TCP).
        self.tls = tls
        self.limits = limits or limits_mod.ServerLimits(
            idle_timeout=600.0, max_connections=4096,
            max_unauthenticated=256, max_unauthenticated_per_host=64)
        self.limits.name = 'chunk server'
        self.id = None
        self.port = None
        self._peer_addrs = {}
        self._peer_asked = {}   # server id -> when the master told its address
        self._server = None
        self._tasks = []
        self._drop_locks = {}
        # Writes this primary applied and forwarded, not answered yet:
        # volume -> {lease generation: count}, and the FENCEs waiting for
        # those of older generations (volume, generation, future); see
        # ReplicationMixin.forwarded.
        self._forwarding = {}
        self._fence_waits = []
        self._heartbeat_interval = 5.0
        # Loop time until which the master cannot have dropped this server
        # from a replica set unbeknown to it (controlplane._heard); none
        # before it registers.
        self._master_lease = float('-inf')
        self._registered = asyncio.Event()
        self._wake = asyncio.Event()    # report to the master now
        # The heartbeat asking the masters for the leader's term, when a
        # TERM claims a newer one (see _judge_term), and the loop time it
        # last ended.
        self._term_asking = None
        self._term_asked = float('-inf')
        self._term_ask_sent = float('-inf')   # when it last began
        self._claims_refused = 0    # since the last warning about them
        self._claims_warned = float('-inf')
        self._term_clients = {}     # master URL -> its own client
        self._loop = None
        self._syncs = []  # (volumes or None for all, future) running
        self._repairs = set()   # repairs started on their own (repair.py)
        self._repairing = set()  # their (volume, index, layer, first)
        self._init_scrub(scrub_interval, light_scrub_interval,
                         scrub_error_limit)
        # Metrics (see metrics.py): served on metrics_port when it is set.
        self.metrics_host = metrics_host
        self.metrics_port = metrics_port
        self.inflight = {}      # id(frame) -> clock() when it was handled
        # The data protocol's open connections (weak: one whose TLS
        # handshake fails is never told it closed).
        self.connections = weakref.WeakSet()
        self.recorded = metrics_mod.Recorder()
        self.metrics = common_metrics.ProcessMetrics('chunkserver')
        self.ops = metrics_mod.register(self, self.metrics)
        self._sync_latency = metrics_mod.sync_histogram(self.metrics)
        self.smart = smart      # a smart.SmartPoller, or None
        if smart is not None:
            metrics_mod.register_smart(smart, self.metrics)
        # The disk's recent latency, for the master (see latency.py).
        self.latency = latency_mod.DiskLatency()

    async def start(self):
        # Kept: get_running_loop() costs a getpid() system call per use.
        self._loop = loop = asyncio.get_running_loop()
        if self.store.unclean:
            t = loop.time()
            n = await loop.run_in_executor(None, self.store.sync_everything)
            LOG.info('The last run did not stop cleanly: %d file(s) it may '
                     'have left unsynced were synced in %.1f s', n,
                     loop.time() - t)
        if self.store.resync_needed:
            self.suspect_after_crash()
        tls = {}
        if self.tls is not None:
            # A handshake that does not end is given up as a peer that
            # does not authenticate (it is not counted before it ends).
            tls = {'ssl': self.tls, 'ssl_handshake_timeout':
                   self.limits.auth_timeout or None}
        self._server = await loop.create_server(
            self._connection, self.bind_host, self.bind_port,
            reuse_address=True, backlog=512, **tls)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.metrics_port:
            served = await self.metrics.serve_here(self.metrics_host,
                                                   self.metrics_port)
            self.metrics_port = served.port
        self._check_open_files()
        LOG.info('Chunk server %s serving %s on %s:%d%s',
                 self.store.server_uuid, self.store.data_dir, self.bind_host,
                 self.port, ' (TLS)' if self.tls is not None else '')
        self._tasks.append(loop.create_task(self._membership()))
        if self._suspect:
            self._tasks.append(loop.create_task(self._resync_when_registered()))
        if self.scrub_interval:
            self._tasks.append(loop.create_task(self._scrub_task()))
        if self.light_scrub_interval:
            self._tasks.append(loop.create_task(self._light_scrub_task()))
        if self.smart is not None:
            self.smart.start()

    def _connection(self):
        conn = aio.ServerConnection(self.key, self.handle,
                                    on_close=self.connections.discard,
                                    limits=self.limits, accept_tickets=True)
        self.connections.add(conn)
        return conn

    def _check_open_files(self):
        """Warn when max_connections cannot be reached: the open files
        limit runs out first, and then accept() and the chunk files fail
        instead of new connections being refused cleanly."""
        want = self.limits.max_connections
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if want and soft != resource.RLIM_INFINITY and soft < want + 256:
            LOG.warning('The open files limit (%d) is below max_connections '
                        '(%d) plus room for chunk files: raise it '
                        '(LimitNOFILE in the systemd unit, ulimit -n) or '
                        'lower [ursa_chunkserver] max_connections', soft,
                        want)

    async def _resync_when_registered(self):
        await self._registered.wait()
        await self.resync_suspects()

    async def wait_registered(self, timeout):
        await asyncio.wait_for(self._registered.wait(), timeout)

    async def stop(self):
        for t in self._tasks:
            t.cancel()
        self.gate.cancel()
        if self._server is not None:
            self._server.close()
        if self.smart is not None:
            await self.smart.stop()
        await self.metrics.close()
        self.peers.close()
        await self.master.close()
        await self.authority.master.close()
        for client in self._term_clients.values():
            await client.close()
        try:
            self.store.sync(*self.store.take_dirty())
            clean = not self._syncs and not self.store.failed_volumes()
        except (OSError, exception.UrsaError) as e:
            LOG.error('Syncing at shutdown failed: %s', e)
            clean = False
        self.store.close(clean)

    def handle(self, conn, frame):
        op = frame.opcode
        if op in _COUNTED:
            # In flight until answered (see _answered, _reply_error).
            self.inflight[id(frame)] = _clock()
        try:
            if self.disk.failure is not None:
                # Nothing is served from a failed data directory: clients
                # and primaries take the error as this replica's and go to
                # others.
                self._reply_error(conn, frame, self._disk_failed_error())
                return
            if conn.ticket is not None:
                try:
                    self._check_ticket(conn.ticket, frame)
                except exception.ProtocolError:
                    raise
                except exception.UrsaError as e:
                    self._reply_error(conn, frame, e)
                    return
            if conn.claiming:
                self._reply_error(conn, frame, exception.Unavailable(
                    reason='this connection claimed a master term the '
                           'masters have not confirmed yet; wait for the '
                           'TERM reply'))
                return
            if op == codec.TERM or conn.master_term is not None and \
                    conn.master_term < self.store.master_term:
                self._judge_term(conn, frame)
                return
            if op == codec.WRITE:
                fn, req = self._write, codec.decode_write(frame.body,
                                                          frame.flags)
                self.throttle.client_ops += 1
            elif op == codec.REPLICATE:
                fn, req = self._replicate, codec.decode_replicate(frame.body,
                                                                  frame.flags)
                conn.cs_peer = True     # another chunk server (metrics)
                if not frame.flags & codec.FLAG_RAW:
                    self.throttle.client_ops += 1
            elif op == codec.READ:
                fn, req = self._read, codec.decode_read(frame.body,
                                                        frame.flags)
                if not frame.flags & codec.FLAG_RAW:
                    self.throttle.client_ops += 1
            elif op == codec.REPAIR:
                fn, req = self._repair, control.decode_repair(frame.body)
            elif op == codec.REBUILD:
                if conn.master_term is None:
                    self._reply_error(conn, frame,
                                      controlplane.master_only(frame))
                    return
                fn, req = self._rebuild, control.decode_rebuild(frame.body)
            elif op == codec.RESYNC:
                fn, req = self._resync, control.decode_resync(frame.body)
                conn.cs_peer = True
            else:
                if op == codec.ENTRIES:
                    conn.cs_peer = True
                self._serve(conn, frame, self._control, None)
                return
            key = (req.volume, req.index)
            # Reads that need no confirmation are not held (see gate.py).
            if op != codec.READ and self.gate.held(key):
                try:
                    self.gate.wait(key, (fn, conn, frame, req))
                except exception.Unavailable as e:
                    self._reply_error(conn, frame, e)
            else:
                self._serve(conn, frame, fn, req)
        except exception.ProtocolError:
            self.inflight.pop(id(frame), None)      # the transport answers
            raise

    # What a ticket connection may send (TICKET itself is answered by the
    # transport): a client's reads and writes, and REPAIR, which a client
    # that read a corrupt block of its volume sends to the chunk's
    # primary.  Not CHUNK_INFO, "ursa cluster check"'s (the cluster
    # key's): a fingerprint of every block of the head, a parent's
    # current data included, and with FLAG_DEEP a read of the whole
    # chunk for a few bytes asked.
    TICKET_OPCODES = frozenset((codec.READ, codec.WRITE, codec.FLUSH,
                                codec.REPAIR))

    def _check_ticket(self, ticket, frame):
        """A request on a ticket connection: refused (NotAuthorized) unless
        it is one a client sends, for a volume the ticket names, while the
        ticket is valid: not expired, and not revoked by a newer lease
        generation of its volume (FENCE from the master, at a forced
        takeover or a host's fencing), which a ticket of generation 0
        (read-only, bound to no lease) is never.

        A WRITE's generation must be the ticket's, a copy-up
        (FLAG_IF_ABSENT) included: the lease check passes copy-ups by, so
        the ticket binds them to its lease (a flatten, sent by a client
        without a lease at generation 0, needs a writable ticket of
        generation 0, which can write no more than copy-ups since the
        lease check refuses every other write of generation 0)."""
        op = frame.opcode
        if op not in self.TICKET_OPCODES:
            raise exception.NotAuthorized(
                reason='%s is not taken on a ticket connection: only the '
                       'cluster key may send it'
                       % codec.OPCODE_NAMES.get(op, '0x%02x' % op))
        aio.check_ticket_expiry(ticket)
        if ticket.generation:
            known = self.store.generation(ticket.volume)
            if known > ticket.generation:
                raise exception.NotAuthorized(
                    reason='ticket of lease generation %d revoked: volume '
                           '%s is at %d (its lease changed hands or its '
                           'host was fenced); take the lease again and get '
                           'a new ticket from the master'
                           % (ticket.generation, ticket.volume, known))
        if op == codec.WRITE or op == codec.FLUSH:
            if op == codec.WRITE:
                req = codec.decode_write(frame.body, frame.flags)
                volume = req.volume
            else:
                volume = codec.decode_flush(frame.body)
            if volume != ticket.volume or not ticket.writable:
                raise exception.NotAuthorized(
                    reason='%s of volume %s on a ticket %s volume %s: get a '
                           'writable ticket for the volume written' % (
                               codec.OPCODE_NAMES[op], volume,
                               'to write' if ticket.writable
                               else 'to read', ticket.volume))
            if op == codec.WRITE and req.generation != ticket.generation:
                raise exception.NotAuthorized(
                    reason='WRITE of lease generation %d on a ticket of '
                           'generation %d (volume %s): write under the '
                           'lease the ticket was issued for'
                           % (req.generation, ticket.generation, volume))
            if op == codec.WRITE and not ticket.generation and \
                    not req.flags & codec.FLAG_IF_ABSENT:
                raise exception.NotAuthorized(
                    reason='a ticket bound to no lease (a flatten\'s) only '
                           'copies blocks up from a parent (volume %s): '
                           'take the lease to write' % volume)
            return
        if op == codec.READ:
            req = codec.decode_read(frame.body, frame.flags)
            volume = req.volume
            # A clone parent only as the snapshot the clone reads.
            allowed = ticket.may_read(volume, req.snap)
        else:
            # REPAIR: a client repairs the head of its own volume only.
            volume = control.decode_repair(frame.body).volume
            allowed = volume == ticket.volume
        if not allowed:
            raise exception.NotAuthorized(
                reason='%s of volume %s on a ticket of volume %s, which '
                       'does not name it among those it may read (a clone '
                       'parent: only as the snapshot the clone was made '
                       'from): get a ticket for it from the master'
                       % (codec.OPCODE_NAMES[op], volume, ticket.volume))

    def _judge_term(self, conn, frame):
        """TERM: a master claims a term for the requests it sends on this
        connection; the newest term seen is kept, and is the reply (a
        master that reads a newer one than it claimed was deposed).  Every
        request of a connection whose term is over (a newer leader
        announced itself, here or in a heartbeat reply) is refused: its
        master was deposed, whatever it still believes.

        A term above the one this server knows is taken only once the
        masters confirm it (:meth:`_confirm_term`): the cluster key is
        held by every chunk server, gateway and attach host, and a term
        taken on its holder's word alone (2**63 - 1, say) would depose
        the real leader on every chunk server for good."""
        if frame.opcode == codec.TERM:
            term = control.decode_term(frame.body)
            if term > self.store.master_term:
                conn.claiming = True
                conn.spawn(self._confirm_term(conn, frame, term,
                                              self._loop.time()))
                return
            self._claim_term(conn, frame, term)
            return
        try:
            self.store.check_master_term(conn.master_term)
        except exception.NotLeader as e:
            LOG.warning('Refusing %s from master %s: %s',
                        codec.OPCODE_NAMES.get(frame.opcode, frame.opcode),
                        conn.peer, e)
            self._reply_error(conn, frame, e)

    # A forged claim costs each master at most one heartbeat this often.
    TERM_ASK_INTERVAL = 1.0
    # How long a claim waits for that heartbeat (the master's TERM call
    # gives up after 5 s).
    TERM_ASK_TIMEOUT = 3.0

    async def _confirm_term(self, conn, frame, term, arrived):
        """Answer a TERM that claims ``term``, newer than the one this
        server knows, once the masters said which term their leader
        holds: a heartbeat, whose reply comes from the leader over the
        signed REST API.  One heartbeat at a time, and no more than one
        per TERM_ASK_INTERVAL (a flood of forged claims costs the
        masters that much); the claim is judged by the answer to a
        heartbeat sent after it arrived, waiting for the interval to
        end if need be.  An answer to one sent before may predate the
        election of the claimant: a forger claiming just before a new
        leader's TERM got that TERM refused (every time, claiming every
        second) until this server's own heartbeat learnt the term.  A
        claim above the leader's term is refused (Unavailable): a real
        new leader retries, or this server learns its term from the
        next heartbeat.  ``arrived``: the loop time the TERM was read."""
        why = None
        try:
            while term > self.store.master_term:
                asking = self._term_asking
                if asking is not None:
                    sent = self._term_ask_sent
                    answer = await asyncio.shield(asking)
                    if sent >= arrived:
                        why = answer
                        break
                    continue  # sent before this claim: ask again
                wait = self._term_asked + self.TERM_ASK_INTERVAL - \
                    self._loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                self._term_ask_sent = self._loop.time()
                self._term_asking = self._loop.create_task(
                    self._ask_term())
        except asyncio.CancelledError:
            conn.claiming = False
            raise
        conn.claiming = False
        if conn.closed:
            return
        if term <= self.store.master_term:
            self._claim_term(conn, frame, term)
            return
        # A forger may claim on every connection, each second: one
        # warning a minute, with the count, and every claim at DEBUG.
        self._claims_refused += 1
        args = (conn.peer, term, self.store.master_term,
                ' (%s)' % why if why else '')
        msg = ('Master %s claims term %d, newer than the masters\' %d%s: '
               'refused')
        now = self._loop.time()
        if now - self._claims_warned >= 60.0:
            LOG.warning(msg + ' (%d such claim(s) since the last message)',
                        *args, self._claims_refused)
            self._claims_warned, self._claims_refused = now, 0
        else:
            LOG.debug(msg, *args)
        self._reply_error(conn, frame, exception.Unavailable(
            reason='term %d is not confirmed by the masters (their leader '
                   'holds %d%s); a master elected since retries its '
                   'command' % (term, self.store.master_term,
                                ', or could not be asked: %s' % why
                                if why else '')))

    async def _ask_term(self):
        """The heartbeat of :meth:`_confirm_term`, sent to every master
        at once (a standby answers NotLeader): the first reply of the
        leader names its term (``_learn_term``).  Not through the
        client of the membership loop, which tries the masters in turn:
        after a leader frozen (SIGSTOP) is replaced, it waits for the
        frozen one first.  Returns why no leader answered, or None."""
        tasks = []
        why = None
        try:
            if self.id is None:
                return 'not registered with the master yet'
            sent = self._loop.time()
            for url in self.master.urls:
                client = self._term_clients.get(url)
                if client is None:
                    client = self._term_clients[url] = \
                        master_mod.AsyncMasterClient(
                            [url], self.key, timeout=self.TERM_ASK_TIMEOUT)
                tasks.append(self._loop.create_task(
                    self._heartbeat(client)))
            for fut in asyncio.as_completed(tasks,
                                            timeout=self.TERM_ASK_TIMEOUT):
                try:
                    reply = await fut
                except TimeoutError:
                    # as_completed's: the time is up (an OSError too).
                    return 'no master answered within %g s' % (
                        self.TERM_ASK_TIMEOUT)
                except (exception.UrsaError, OSError) as e:
                    why = str(e) or type(e).__name__
                    continue
                self._heard(sent, reply)
                return None
            return why or 'no master answered'
        finally:
            for t in tasks:
                t.cancel()
            self._term_asking = None
            self._term_asked = self._loop.time()

    def _claim_term(self, conn, frame, term):
        """TERM with a term this server knows or has confirmed: kept for
        the connection, and the reply names the newest term."""
        if conn.master_term is None or term > conn.master_term:
            conn.master_term = term
        if term < self.store.master_term:
            LOG.warning('Master %s claims term %d, older than %d: its '
                        'requests are refused', conn.peer, term,
                        self.store.master_term)
        conn.send(codec.encode_ok(
            frame.opcode, frame.req_id,
            control.encode_u64(self.store.master_term)))

    def _serve_item(self, item, confirmed, failed):
        fn, conn, frame, req = item
        self._serve(conn, frame, fn, req, confirmed, failed)

    def _serve(self, conn, frame, fn, req, confirmed=False, failed=None):
        """Run a request's handler and answer its errors.  A request that
        names what the master must confirm first waits for it (and the
        later requests for its chunk behind it), unless asking the master
        just ``failed``."""
        try:
            fn(conn, frame, req, confirmed)
        except authority_mod.Unconfirmed:
            key = (req.volume, req.index)
            failed = failed or self.gate.recent_failure(key)
            if failed is not None:
                self._reply_error(conn, frame, failed)
            elif self.gate.held(key):
                try:
                    self.gate.wait(key, (fn, conn, frame, req))
                except exception.Unavailable as e:
                    self._reply_error(conn, frame, e)
            else:
                self.gate.hold(key, self.authority.confirm(*key),
                               (fn, conn, frame, req), confirms=True)
        except exception.ProtocolError:
            raise
        except (exception.UrsaError, OSError) as e:
            self._reply_error(conn, frame, e)

    def _reply_error(self, conn, frame, e):
        """Answer ``frame`` with the error ``e``: an Ursa error as it is, an
        OSError as a disk error (the client then drops this replica; it
        counts towards failing the data directory), any other as an
        internal error, logged with its traceback."""
        if isinstance(e, OSError):
            LOG.error('Disk I/O error serving %r: %s', frame, e)
            self._disk_error(e)
            e = exception.DiskError(reason='I/O error: %s' % e)
        elif not isinstance(e, exception.UrsaError):
            LOG.error('Serving %r failed', frame, exc_info=e)
            e = exception.InternalError(reason=str(e))
        conn.send(codec.encode_error(frame.opcode, frame.req_id, e))
        op = metrics_mod.op_of(frame)
        t0 = None if op is None else self.inflight.pop(id(frame), None)
        if t0 is not None:
            self.ops.done(op, metrics_mod.clock() - t0, error=e)
            if frame.opcode in metrics_mod.WRITES and \
                    isinstance(e, metrics_mod.REFUSALS):
                self.recorded.refused[type(e).__name__] += 1

    def _unserved(self, item):
        """A request that waited for its chunk is not served: its
        connection closed meanwhile (see gate.Gate)."""
        self.inflight.pop(id(item[2]), None)

    def _answered(self, frame, op, nbytes=0):
        """Count the reply to ``frame``, just sent or queued, as ``op``
        (its latency since it was handled)."""
        t0 = self.inflight.pop(id(frame), None)
        if t0 is not None:
            self.ops.done(op, _clock() - t0, nbytes)

    def _disk_error(self, err):
        """Count ``err`` (an OSError); fail the data directory when it is
        one too many."""
        if not self.disk.note(err):
            return
        LOG.critical(
            'DATA DIRECTORY %s FAILED (%s): this chunk server serves '
            'nothing from it from now on and the master re-replicates its '
            'chunks; replace or check the disk, then restart this chunk '
            'server', self.store.data_dir, self.disk.failure)
        self._wake.set()

    def _disk_failed_error(self):
        return exception.DiskError(
            reason='the data directory %s of chunk server %s failed (%s) '
                   'and serves nothing until the server is restarted'
                   % (self.store.data_dir, self.id, self.disk.failure))

    def _read(self, conn, frame, req, confirmed):
        if not self.master_lease_valid():
            # The master may have dropped this replica while it could not
            # be told (see master_lease_valid): the epoch is confirmed
            # first, and with no master to confirm it the client reads
            # another replica.  (A joining copy is not marked stale here:
            # the store refuses it reads anyway.)
            if not confirmed:
                raise authority_mod.Unconfirmed()
            self.authority.view(req.volume, req.index, req.epoch, self.id,
                                confirmed, joining=True)
        known = self.store.known_epoch(req.volume, req.index)
        if known is not None and req.epoch > known:
            self.authority.view(req.volume, req.index, req.epoch, self.id,
                                confirmed)
        c = self.store.check_epoch(req.volume, req.index, req.epoch)
        if c is None:
            # No copy here: zeros only if the master says this server is
            # a replica (one never written), not for a map that still
            # names a server whose copy was dropped and deleted.
            self.authority.view(req.volume, req.index, req.epoch, self.id,
                                confirmed)
        if frame.flags & codec.FLAG_RAW:
            if req.offset % BLOCK or req.length % BLOCK \
                    or not 0 < req.length // BLOCK \
                    <= control.MAX_REPAIR_BLOCKS:
                raise exception.InvalidArgument(
                    reason='raw reads are of 1 to %d whole blocks'
                    % control.MAX_REPAIR_BLOCKS)
            if c is None:
                raise exception.NotFound(kind='chunk replica', name='%s/%d'
                                         % (req.volume, req.index))
            # ``snap`` names a layer here (its sequence), not a snapshot.
            conn.send(codec.encode_read_raw_ok(frame.req_id, *self.store.raw(
                c, req.offset // BLOCK, req.length // BLOCK, req.snap)))
            self._answered(frame, 'catchup', req.length)
            return
        if self._suspect:
            self.check_not_suspect(req.volume, req.index, req.epoch,
                                   confirmed)
        if frame.flags & codec.FLAG_MAP_ONLY:
            states = self.store.block_states(c, req.offset, req.length,
                                             req.snap, req.since)
            conn.send(codec.encode_read_ok(frame.req_id, b'', states))
            self._answered(frame, 'read')
            return
        try:
            t0 = _clock()
            data, states = self.store.read_blocks(c, req.offset, req.length,
                                                  req.snap)
            t1 = _clock()
            self.latency.read.add(t1 - t0, t1)
        except exception.ChecksumError as e:
            # The reader goes to another replica; this copy is repaired
            # behind it (not only served around), the head or the layer
            # that holds the bad block.
            if getattr(e, 'block', None) is not None:
                self.repair_later(req.volume, req.index, e.block, 1,
                                  e.layer)
            raise
        conn.send(codec.encode_read_ok(
            frame.req_id, data,
            states if frame.flags & codec.FLAG_STATES else None))
        self._answered(frame, 'read', req.length)

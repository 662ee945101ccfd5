"""NBD's handshake (fixed newstyle option haggling) as a state machine,
sans I/O.

The connection sends :meth:`Negotiation.greeting`, then reads exactly
:attr:`Negotiation.want` bytes at a time and hands them to
:meth:`Negotiation.receive`, which returns the bytes to send and an event,
or None.  Four events need the connection to act and answer:

* :class:`OpenExport`: open the export (for NBD_OPT_INFO only look it
  up: INFO must not open a volume, which would take its write lease), then
  call ``export_opened(size, flags)`` or ``export_refused()``;
* :class:`ListExports`: call ``exports_listed(names)``;
* :class:`ListBitmaps`: call ``bitmaps_listed(bitmaps)`` with the dirty
  bitmaps the export offers, or ``bitmaps_unlisted(reason)``;
* :class:`StartTls`: send the ACK, upgrade to TLS, call ``tls_started()``.

Metadata contexts: ``base:allocation``, and ``qemu:dirty-bitmap:NAME``
for each dirty bitmap an export offers (QEMU's namespace: its
docs/interop/nbd.txt).  What NBD_OPT_SET_META_CONTEXT selected for the
export that transmission begins with is in :attr:`Negotiation.contexts`.

:class:`Ready` (transmission begins with the export just opened) and
:class:`Close` (close the connection, nothing more to say) end it.  A
client that does not speak the protocol raises ProtocolError.
"""

from cinder_ursa import exception
from cinder_ursa.nbd import protocol as p


class OpenExport:
    """Open export ``name`` for ``option`` (EXPORT_NAME, INFO or GO)."""

    def __init__(self, option, name, requests=()):
        self.option = option
        self.name = name
        self.requests = list(requests)

    def __repr__(self):
        return '<OpenExport %d %r>' % (self.option, self.name)


class ListExports:
    """List the export names (NBD_OPT_LIST)."""


class ListBitmaps:
    """Look up the dirty bitmaps export ``name`` offers, for ``queries``
    of NBD_OPT_LIST_META_CONTEXT or NBD_OPT_SET_META_CONTEXT (``option``)
    that name them: all of them when ``every``, else those of ``names``
    that exist (at most MAX_BITMAP_NAMES)."""

    def __init__(self, option, name, queries):
        self.option = option
        self.name = name
        self.queries = list(queries)
        self.every = p.lists_every_bitmap(queries,
                                          option == p.OPT_LIST_META_CONTEXT)
        self.names = [] if self.every else p.bitmap_names(queries)

    def __repr__(self):
        return '<ListBitmaps %d %r>' % (self.option, self.name)


class StartTls:
    """Upgrade the connection to TLS now (the ACK is in the bytes)."""


class Ready:
    """Transmission begins with the export just opened."""


class Close:
    """Close the connection (``reason`` for the log)."""

    def __init__(self, reason):
        self.reason = reason


class MetaContext:
    """A metadata context selected: its ``id`` in block status replies,
    its ``name``, and for a dirty bitmap what the connection listed for
    it (``bitmap``; None for base:allocation)."""

    __slots__ = ('id', 'name', 'bitmap')

    def __init__(self, context_id, name, bitmap=None):
        self.id = context_id
        self.name = name
        self.bitmap = bitmap

    def __eq__(self, other):
        return isinstance(other, MetaContext) and (
            (self.id, self.name, self.bitmap) ==
            (other.id, other.name, other.bitmap))

    def __repr__(self):
        return '<MetaContext %d %s>' % (self.id, self.name)


_FLAGS, _HEADER, _DATA, _ANSWER, _DONE = range(5)
# Dirty bitmaps one LIST/SET_META_CONTEXT may name (each may be a request
# to the master): past it, NBD_REP_ERR_TOO_BIG.
MAX_BITMAP_NAMES = 16
TLS_REQUIRED = b'this server requires TLS (NBD_OPT_STARTTLS)'
# One reply for a volume that does not exist and one this client may not
# use (not attached to this host...): a probe learns nothing more.
NO_EXPORT = b'no such volume, or it cannot be opened'


class Negotiation:
    """What one client negotiated, and the replies to its options."""

    def __init__(self, tls_available=False, tls_required=False):
        self.tls_available = tls_available
        self.tls_required = tls_required and tls_available
        self.want = 4            # bytes receive() takes next
        self.no_zeroes = False
        self.tls = False
        self.structured = False
        self.base_allocation = False  # base:allocation selected
        self.contexts = []            # [MetaContext] selected, by id
        self._meta_export = None      # the export SET_META_CONTEXT named
        self._state = _FLAGS
        self._option = None
        self._asked = None       # the event awaiting its answer
        # Options refused for policy: an export, or no TLS when it is
        # required (the gateway's handshake metrics).
        self.refusals = 0

    @staticmethod
    def greeting():
        return p.handshake()

    def receive(self, data):
        """Take the ``want`` bytes asked for; return (bytes out, event)."""
        if self._state in (_ANSWER, _DONE) or len(data) != self.want:
            raise exception.InvalidArgument(
                reason='%d bytes in state %d (want %d)'
                % (len(data), self._state, self.want))
        if self._state == _FLAGS:
            self.no_zeroes = p.decode_client_flags(data)
            self._next_option()
            return b'', None
        if self._state == _HEADER:
            self._option, self.want = p.decode_option_header(data)
            self._state = _DATA
            return b'', None
        option = self._option
        self._next_option()
        return self._option_data(option, bytes(data))

    def _next_option(self):
        self._state, self.want = _HEADER, p.OPTION.size

    def _ask(self, event):
        self._state, self._asked, self.want = _ANSWER, event, 0
        return b'', event

    def _answered(self, kind):
        if self._state != _ANSWER or not isinstance(self._asked, kind):
            raise exception.InvalidArgument(
                reason='no %s awaits an answer' % kind.__name__)
        event, self._asked = self._asked, None
        self._next_option()
        return event

    def _end(self, out, event):
        self._state, self.want = _DONE, 0
        return out, event

    def _option_data(self, option, data):
        if option == p.OPT_STARTTLS:
            return self._starttls(data)
        if self.tls_required and not self.tls and option != p.OPT_ABORT:
            self.refusals += 1
            if option == p.OPT_EXPORT_NAME:
                return self._end(b'', Close('TLS is required'))
            return p.option_reply(option, p.REP_ERR_TLS_REQD,
                                  TLS_REQUIRED), None
        if option == p.OPT_EXPORT_NAME:
            return self._ask(OpenExport(option,
                                        data.decode('utf-8', 'replace')))
        if option == p.OPT_ABORT:
            return self._end(p.option_reply(option, p.REP_ACK),
                             Close('the client aborted'))
        if option == p.OPT_LIST:
            if data:
                return p.option_reply(option, p.REP_ERR_INVALID), None
            return self._ask(ListExports())
        if option == p.OPT_STRUCTURED_REPLY:
            if data:
                return p.option_reply(option, p.REP_ERR_INVALID), None
            self.structured = True
            return p.option_reply(option, p.REP_ACK), None
        if option in (p.OPT_LIST_META_CONTEXT, p.OPT_SET_META_CONTEXT):
            return self._meta_context(option, data)
        if option in (p.OPT_INFO, p.OPT_GO):
            try:
                name, requests = p.decode_info(data)
            except exception.InvalidArgument:
                return p.option_reply(option, p.REP_ERR_INVALID), None
            return self._ask(OpenExport(option, name, requests))
        return p.option_reply(option, p.REP_ERR_UNSUP), None

    def _starttls(self, data):
        option = p.OPT_STARTTLS
        if not self.tls_available:
            return p.option_reply(option, p.REP_ERR_POLICY,
                                  b'TLS is not configured'), None
        if data or self.tls:
            return p.option_reply(option, p.REP_ERR_INVALID), None
        self._state, self._asked, self.want = _ANSWER, StartTls(), 0
        return p.option_reply(option, p.REP_ACK), self._asked

    def tls_started(self):
        """The connection is now under TLS: nothing negotiated before
        holds (the spec: the server MUST NOT preserve it)."""
        self._answered(StartTls)
        self.tls = True
        self.structured = False
        self._unselect()

    def _unselect(self):
        self.base_allocation, self.contexts = False, []
        self._meta_export = None

    def _meta_context(self, option, data):
        """LIST/SET_META_CONTEXT: (bytes out, ListBitmaps or None).  A
        SET replaces what an earlier one selected, also when it fails.
        Queries that may name dirty bitmaps are answered once the
        connection listed those of the export."""
        setting = option == p.OPT_SET_META_CONTEXT
        if setting:
            self._unselect()
        try:
            name, queries = p.decode_meta_context(data)
        except exception.InvalidArgument:
            return p.option_reply(option, p.REP_ERR_INVALID), None
        if not self.structured:
            return p.option_reply(option, p.REP_ERR_INVALID,
                                  b'negotiate structured replies first'), None
        event = ListBitmaps(option, name, queries)
        if len(event.names) > MAX_BITMAP_NAMES:
            return p.option_reply(
                option, p.REP_ERR_TOO_BIG,
                b'at most %d qemu:dirty-bitmap: names in one option'
                % MAX_BITMAP_NAMES), None
        if event.every or event.names:
            return self._ask(event)
        return self._meta_reply(option, name, queries, {}), None

    def _meta_reply(self, option, name, queries, bitmaps):
        """The replies to LIST/SET_META_CONTEXT, the export offering
        ``bitmaps`` ({name: what the connection listed}); a SET selects
        the contexts, each with an id of its own (1, 2...)."""
        setting = option == p.OPT_SET_META_CONTEXT
        contexts = []
        if p.match_meta_context(queries, not setting):
            contexts.append(MetaContext(len(contexts) + 1,
                                        p.META_BASE_ALLOCATION))
        for leaf in p.match_dirty_bitmaps(queries, bitmaps, not setting):
            contexts.append(MetaContext(len(contexts) + 1,
                                        p.META_DIRTY_BITMAP + leaf,
                                        bitmaps[leaf]))
        out = b''.join(p.option_reply(option, p.REP_META_CONTEXT,
                                      p.meta_context_reply(
                                          c.id if setting else 0, c.name))
                       for c in contexts)
        if setting:
            self.contexts, self._meta_export = contexts, name
            self.base_allocation = any(c.bitmap is None for c in contexts)
        return out + p.option_reply(option, p.REP_ACK)

    def bitmaps_listed(self, bitmaps):
        """The replies to the LIST/SET_META_CONTEXT that asked, the export
        offering ``bitmaps``: {leaf name: what the connection keeps of
        it}, in the order to list them.  A name queried that is not
        there selects nothing."""
        event = self._answered(ListBitmaps)
        return self._meta_reply(event.option, event.name, event.queries,
                                bitmaps)

    def bitmaps_unlisted(self, reason):
        """The dirty bitmaps could not be looked up (no master reachable):
        an error reply with ``reason`` (a SET selected nothing); the
        client may ask again."""
        event = self._answered(ListBitmaps)
        return p.option_reply(event.option, p.REP_ERR_POLICY,
                              reason.encode()[:4096])

    def exports_listed(self, names):
        """The replies to NBD_OPT_LIST."""
        self._answered(ListExports)
        return b''.join(p.option_reply(p.OPT_LIST, p.REP_SERVER,
                                       p.server_reply(n))
                        for n in names) + p.option_reply(p.OPT_LIST,
                                                         p.REP_ACK)

    def exports_unlisted(self, reason):
        """NBD_OPT_LIST could not be answered (no master reachable): an
        error reply with ``reason``; the client may ask again."""
        self._answered(ListExports)
        return p.option_reply(p.OPT_LIST, p.REP_ERR_POLICY,
                              reason.encode()[:4096])

    def export_opened(self, size, flags):
        """The export asked for is open, with its size and transmission
        flags (TF_SEND_DF is added here when structured replies are on):
        return (bytes out, Ready or None)."""
        event = self._answered(OpenExport)
        option = event.option
        if self.structured:
            flags |= p.TF_SEND_DF  # reads are never fragmented
        if option == p.OPT_INFO:
            return self._info(option, size, flags), None
        if self._meta_export is not None and self._meta_export != event.name:
            # The contexts were selected for another export.
            self._unselect()
        if option == p.OPT_GO:
            return self._end(self._info(option, size, flags), Ready())
        return self._end(p.export_name_reply(size, flags, self.no_zeroes),
                         Ready())

    @staticmethod
    def _info(option, size, flags):
        return (p.option_reply(option, p.REP_INFO, p.info_export(size, flags))
                + p.option_reply(option, p.REP_INFO,
                                 p.info_block_size(p.MAX_REQUEST))
                + p.option_reply(option, p.REP_ACK))

    def export_refused(self, message=NO_EXPORT):
        """The export asked for cannot be opened: return (bytes out, Close
        or None).  EXPORT_NAME has no way to say why: the connection
        closes."""
        event = self._answered(OpenExport)
        self.refusals += 1
        if event.option == p.OPT_EXPORT_NAME:
            # Without the name: it may carry the attachment's export
            # token (VOLUME~TOKEN), a secret the reason would log.  The
            # server logs the refusal, with the name less the token.
            return self._end(b'', Close('export refused (old-style '
                                        'NBD_OPT_EXPORT_NAME)'))
        return p.option_reply(event.option, p.REP_ERR_UNKNOWN, message), None

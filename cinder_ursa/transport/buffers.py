"""Receive buffers of the asyncio transports.

:class:`ReceiveBuffer` is the receive side of an ``asyncio.BufferedProtocol``
for any protocol made of a fixed-size header and a payload whose length the
header gives: the chunk servers' data protocol and NBD's transmission
phase both use it.  :class:`BufferPool` hands out the buffers large payloads
are received into.
"""

import sys
import threading


class BufferPool:
    """Receive buffers for large payloads, used again once nothing refers
    to them.

    A new 1 MiB bytearray costs a memset of all of it (and, from fresh
    pages, a page fault per 4 KiB): on the 1M write path that was 1-2% of
    the machine's CPU in every process.  A buffer is handed out as a
    memoryview of the requested length; it is free again when no view of
    it is left (its reference count says so: the pool is CPython-only, as
    the rest of Ursa).  Sizes are powers of two from MIN to MAX; larger
    requests get a buffer of their own.

    What the pool keeps is bounded twice: KEEP buffers per size, and
    KEEP_BYTES in all (without it, 32 buffers of each of the 8 sizes
    would be 511 MiB kept for good after one burst of large frames).
    A buffer past either bound is handed out all the same and freed when
    its last view goes.
    """

    MIN = 64 * 1024
    MAX = 8 * 1024 * 1024
    KEEP = 32  # buffers kept per size
    KEEP_BYTES = 128 * 1024 * 1024  # bytes kept in all sizes

    def __init__(self):
        self._classes = {}
        self.kept = 0   # bytes of the buffers kept
        self._free_refs = self._free_count()
        # Event loops in several threads share the pool (the sync client
        # runs one per thread).  Under the GIL the reference count alone
        # keeps two threads from taking one buffer (each sees the other's
        # loop variable); the lock keeps that true without relying on it.
        self._lock = threading.Lock()

    def get(self, length):
        if length > self.MAX:
            return memoryview(bytearray(length))
        size = max(self.MIN, 1 << (length - 1).bit_length())
        with self._lock:
            bufs = self._classes.setdefault(size, [])
            for buf in bufs:
                if sys.getrefcount(buf) == self._free_refs:
                    return memoryview(buf)[:length]
            buf = bytearray(size)
            if len(bufs) < self.KEEP and \
                    self.kept + size <= self.KEEP_BYTES:
                bufs.append(buf)
                self.kept += size
            return memoryview(buf)[:length]

    @staticmethod
    def _free_count():
        """The reference count of a pooled buffer nobody uses, as seen in
        get()'s loop (the list, the loop variable, getrefcount's
        argument)."""
        probe = [bytearray(1)]
        for buf in probe:
            return sys.getrefcount(buf)


POOL = BufferPool()


class ReceiveBuffer:
    """Scratch buffer plus large payloads received in place.

    The kernel writes headers and small payloads into one scratch buffer;
    the payload of ``LARGE`` bytes or more of a frame whose header has
    arrived goes straight into a buffer of its own from :data:`POOL`, so a
    1 MiB WRITE or READ reply is not copied again on its way in.

    ``header`` is the frame header's ``struct.Struct``;
    ``payload_length(fields)`` gets the unpacked header and returns the
    length of the payload that follows it, or raises ProtocolError for a
    header that is not the protocol's.

    The owner hands :meth:`get_buffer` and :meth:`buffer_updated` the
    protocol's calls of the same names, then takes whole frames with
    :meth:`next` (or raw bytes with :meth:`take`) at its own pace.

    ``scratch``: the scratch buffer's first size.  A server gives a
    connection not yet authenticated a small one (a new connection must
    not cost SCRATCH before it proved anything) and calls :meth:`grow`
    once it is; it must hold a whole frame of what ``payload_length``
    accepts meanwhile.
    """

    SCRATCH = 256 * 1024
    LARGE = 64 * 1024

    def __init__(self, header, payload_length, scratch=None):
        self._unpack = header.unpack_from
        self._hsize = header.size
        self._payload_length = payload_length
        self._size = scratch or self.SCRATCH
        self._scratch = bytearray(self._size)
        self._view = memoryview(self._scratch)
        self._start = 0        # first unconsumed byte in scratch
        self._end = 0          # end of received bytes in scratch
        self._direct = None    # [fields, buffer, filled] being received
        self._ready = []       # whole frames not yet taken, in order
        # admit(n): whether a buffer of its own may be made now for a
        # payload of n bytes (None: always).  When it says no, the header
        # stays in scratch, ``stalled`` is set, and the owner stops
        # reading until admit may say yes (it parses again then): the
        # buffer is made, and filled, at once, so a header alone would
        # otherwise cost its whole payload's memory.
        self.admit = None
        self.stalled = False

    @property
    def buffered(self):
        """Bytes received into scratch and not taken yet."""
        return self._end - self._start

    @property
    def receiving(self):
        """Whether a large payload is being received into a buffer of
        its own (its header here, not all of it)."""
        return self._direct is not None

    @property
    def holding(self):
        """Whether any received byte is not taken yet (a frame partly
        received, or whole and not taken)."""
        return bool(self._end - self._start or self._direct or self._ready)

    @property
    def size(self):
        """Bytes of the scratch buffer."""
        return self._size

    def accept(self, payload_length):
        """Judge the headers of the frames not parsed yet with
        ``payload_length`` from now on (a server, once its peer is
        authenticated)."""
        self._payload_length = payload_length

    def grow(self, size=None):
        """Make the scratch buffer ``size`` bytes (SCRATCH by default),
        keeping what it holds."""
        size = size or self.SCRATCH
        if size <= self._size:
            return
        n = self._end - self._start
        scratch = bytearray(size)
        scratch[:n] = self._view[self._start:self._end]
        self._scratch, self._view, self._size = scratch, memoryview(scratch), \
            size
        self._start, self._end = 0, n

    def get_buffer(self, sizehint):
        direct = self._direct
        if direct is not None:
            return direct[1][direct[2]:]
        if self._start and self._size - self._end < self.LARGE + \
                self._hsize:
            # Compact: the unconsumed tail moves to the front, so the
            # kernel always gets room for a whole small frame.
            n = self._end - self._start
            self._scratch[:n] = self._view[self._start:self._end]
            self._start, self._end = 0, n
        return self._view[self._end:]

    def buffer_updated(self, nbytes):
        direct = self._direct
        if direct is None:
            self._end += nbytes
            return
        direct[2] += nbytes
        if direct[2] == len(direct[1]):
            self._direct = None
            self._ready.append((direct[0], direct[1]))

    def next(self):
        """The next whole frame as ``(fields, payload)``, or None.

        ``payload`` is ``bytes`` (``b''`` when there is none), or a
        memoryview of a pooled buffer for a large one.  Raises what
        ``payload_length`` raises.
        """
        if self._ready:
            return self._ready.pop(0)
        pos, end, hsize = self._start, self._end, self._hsize
        if end - pos < hsize:
            return None
        fields = self._unpack(self._scratch, pos)
        n = self._payload_length(fields)
        at = pos + hsize
        if end - at >= n:
            pos = at + n
            if pos == end:
                self._start = self._end = 0
            else:
                self._start = pos
            return fields, bytes(self._view[at:pos]) if n else b''
        self._wait_payload(fields, n, at)
        return None

    def frames(self):
        """Every whole frame received so far, as :meth:`next` returns
        them (one call for a burst of frames).  Raises what
        ``payload_length`` raises, and the frames before are lost: the
        connection is to be dropped."""
        out = self._ready
        if out:
            self._ready = []
            if self._direct is not None:
                return out
        else:
            out = []
        view, unpack, payload_length = self._view, self._unpack, \
            self._payload_length
        pos, end, hsize = self._start, self._end, self._hsize
        while end - pos >= hsize:
            fields = unpack(view, pos)
            n = payload_length(fields)
            at = pos + hsize
            if end - at >= n:
                pos = at + n
                out.append((fields, bytes(view[at:pos]) if n else b''))
                continue
            self._start = pos
            self._wait_payload(fields, n, at)
            return out
        if pos == end:
            pos = end = 0
        self._start, self._end = pos, end
        return out

    def unread(self, frames):
        """Give back frames taken and not handled: the next calls return
        them first."""
        self._ready[:0] = frames

    def _wait_payload(self, fields, n, at):
        """The payload of ``n`` bytes at ``at`` is not all here: a large
        one is received straight into a buffer of its own."""
        if n >= self.LARGE or n > self._size - self._hsize:
            if self.admit is not None and not self.admit(n):
                self.stalled = True
                return
            self.stalled = False
            have = self._end - at
            buf = POOL.get(n)
            buf[:have] = self._view[at:self._end]
            self._direct = [fields, buf, have]
            self._start = self._end = 0

    def several(self):
        """Whether scratch holds the start of more than one frame (its
        first frame's header and payload, and the next header)."""
        pos, end, hsize = self._start, self._end, self._hsize
        if end - pos < 2 * hsize:
            return False
        try:
            n = self._payload_length(self._unpack(self._scratch, pos))
        except Exception:  # noqa: BLE001 - next() reports it
            return False
        return end - pos - n >= 2 * hsize

    def take(self, n):
        """The next ``n`` raw bytes (n <= SCRATCH // 2), or None until
        that many have arrived."""
        start = self._start
        if self._end - start < n:
            return None
        data = bytes(self._view[start:start + n])
        start += n
        if start == self._end:
            self._start = self._end = 0
        else:
            self._start = start
        return data

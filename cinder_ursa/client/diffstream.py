"""The diff stream: what changed in a volume between two of its states,
as bytes that go to a file or a pipe and are applied to another volume,
on this cluster or another one (``ursa volume export-diff`` and
``import-diff``).

Format, version 1 (all integers big-endian)::

    stream  := "URSADIFF" version:u16  record*
    record  := kind:u8  length:u32  payload[length]  crc:u32
                 crc = CRC32C of kind, length and payload
    kinds:
      'H'  header, first and once: UTF-8 JSON {"version": 1,
           "volume": the source's name, "size": its size in bytes,
           "from_snapshot": the older snapshot's name or null (a full
           stream), "to_snapshot": the newer one's or null (the live
           volume)}
      'W'  data:  offset:u64  bytes (at most 4 MiB)
      'Z'  zeros: offset:u64  length:u64
      'E'  end, last and once: records:u64 (W and Z)  data bytes:u64

Extents come in increasing offsets, never overlapping, inside ``size``.
Whatever breaks a rule (a bad magic or CRC, a record out of order, a
stream that ends before 'E', bytes after it) refuses the stream.

:func:`import_diff` applies a stream to a volume that has the stream's
older snapshot (a full stream: to any volume) and then takes the
newer snapshot on it, so streams chain: the full one, then each
incremental.  A stream refused midway changes nothing: the volume is
reverted to a snapshot taken before the first write (and its size put
back), and that snapshot deleted.
"""

import asyncio
import json
import logging
import struct
import uuid

import crc32c

from cinder_ursa import exception
from cinder_ursa.client import diff as diff_mod
from cinder_ursa.common import units
from cinder_ursa.protocol import names

LOG = logging.getLogger(__name__)

MAGIC = b'URSADIFF'
VERSION = 1
_START = struct.Struct('!8sH')
_RECORD = struct.Struct('!BI')           # kind, payload length
_CRC = struct.Struct('!I')
_OFFSET = struct.Struct('!Q')
_ZERO = struct.Struct('!QQ')
_END = struct.Struct('!QQ')
HEADER, DATA, ZERO, END = b'H', b'W', b'Z', b'E'
MAX_DATA = 4 * units.Mi                  # bytes of one data record
MAX_HEADER = 64 * 1024
PARALLEL = 8


class StreamError(exception.InvalidArgument):
    """A diff stream that breaks the format: refused."""

    def __init__(self, reason):
        super().__init__(reason='diff stream refused: %s' % reason)


def record(kind, payload):
    head = _RECORD.pack(kind[0], len(payload))
    crc = crc32c.crc32c(payload, crc32c.crc32c(head))
    return head + payload + _CRC.pack(crc)


class Writer:
    """Writes a stream to ``out`` (a binary file object)."""

    def __init__(self, out, header):
        self.out = out
        self.records = 0
        self.data_bytes = 0
        out.write(_START.pack(MAGIC, VERSION))
        out.write(record(HEADER, json.dumps(
            dict(header, version=VERSION), sort_keys=True).encode()))

    def data(self, offset, data):
        for at in range(0, len(data), MAX_DATA):
            piece = data[at:at + MAX_DATA]
            self.out.write(record(DATA, _OFFSET.pack(offset + at)
                                  + bytes(piece)))
            self.records += 1
            self.data_bytes += len(piece)

    def zero(self, offset, length):
        self.out.write(record(ZERO, _ZERO.pack(offset, length)))
        self.records += 1

    def end(self):
        self.out.write(record(END, _END.pack(self.records,
                                             self.data_bytes)))
        self.out.flush()


class Reader:
    """Reads and checks a stream from ``src`` (a binary file object):
    ``header`` after construction, then :meth:`extents` yields
    ``(offset, data)`` and ``(offset, length)`` (zeros) in order."""

    def __init__(self, src):
        self.src = src
        self.read_bytes = 0
        start = self._exact(_START.size, 'its start')
        magic, version = _START.unpack(start)
        if magic != MAGIC:
            raise StreamError('it does not start with %r: not an Ursa '
                              'diff stream' % MAGIC.decode())
        if version != VERSION:
            raise StreamError('version %d; this ursa reads version %d'
                              % (version, VERSION))
        kind, payload = self._record()
        if kind != HEADER:
            raise StreamError('its first record is %r, not the header'
                              % kind.decode('latin-1'))
        try:
            header = json.loads(payload)
            size = header['size']
            if type(size) is not int or size <= 0 or any(
                    header.get(k) is not None
                    and not isinstance(header[k], str)
                    for k in ('from_snapshot', 'to_snapshot', 'volume')):
                raise ValueError('bad field')
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            why = 'nested too deep' if isinstance(e, RecursionError) else e
            raise StreamError('its header is not valid (%s)' % why) \
                from None
        self.header = header
        self.size = size

    def _exact(self, n, what):
        buf = self.src.read(n)
        while buf is not None and len(buf) < n:
            more = self.src.read(n - len(buf))
            if not more:
                break
            buf += more
        if buf is None or len(buf) < n:
            raise StreamError('it ends in %s (%d bytes read): truncated'
                              % (what, self.read_bytes + len(buf or b'')))
        self.read_bytes += n
        return buf

    def _record(self):
        at = self.read_bytes
        head = self._exact(_RECORD.size, 'a record\'s header')
        kind, length = _RECORD.unpack(head)
        kind = bytes([kind])
        limit = {HEADER: MAX_HEADER, DATA: _OFFSET.size + MAX_DATA,
                 ZERO: _ZERO.size, END: _END.size}.get(kind)
        if limit is None:
            raise StreamError('unknown record kind %r at byte %d'
                              % (kind.decode('latin-1'), at))
        if length > limit or (kind in (ZERO, END) and length != limit) \
                or (kind == DATA and length <= _OFFSET.size):
            raise StreamError('a %r record of %d bytes at byte %d'
                              % (kind.decode(), length, at))
        payload = self._exact(length, 'a record')
        crc = _CRC.unpack(self._exact(_CRC.size, 'a record\'s CRC'))[0]
        if crc32c.crc32c(payload, crc32c.crc32c(head)) != crc:
            raise StreamError('the record at byte %d fails its CRC: the '
                              'stream is corrupt' % at)
        return kind, payload

    def extents(self):
        records = data_bytes = 0
        end = 0
        while True:
            at = self.read_bytes
            kind, payload = self._record()
            if kind == END:
                break
            if kind == HEADER:
                raise StreamError('a second header at byte %d' % at)
            if kind == DATA:
                offset = _OFFSET.unpack_from(payload)[0]
                length = len(payload) - _OFFSET.size
            else:
                offset, length = _ZERO.unpack(payload)
            if offset < end or length <= 0 or offset + length > self.size:
                raise StreamError(
                    'the extent at byte %d (%d bytes at offset %d) is out '
                    'of order or outside the volume of %d bytes'
                    % (at, length, offset, self.size))
            end = offset + length
            records += 1
            if kind == DATA:
                data_bytes += length
                yield offset, memoryview(payload)[_OFFSET.size:]
            else:
                yield offset, length
        want = _END.unpack(payload)
        if want != (records, data_bytes):
            raise StreamError('its end says %d records and %d data bytes; '
                              'it had %d and %d' % (want + (records,
                                                            data_bytes)))
        if self.src.read(1):
            raise StreamError('bytes follow its end')


async def export_diff(cluster, ref, out, older=None, progress=None):
    """Write the stream of what changed in ``ref`` (``volume`` or
    ``volume@snapshot``) after snapshot ``older`` (None: all it holds)
    to ``out``; return the :class:`Writer` (its counts).
    ``progress(n)`` is called with the data bytes read."""
    view, since = await diff_mod.open_views(cluster, ref, older)
    try:
        extents = await diff_mod.changed_extents(view, since)
        if since is None:
            # A full stream says what reads zeros too: applied to a
            # volume holding data, it leaves exactly the source.
            extents = sorted(extents + diff_mod.complement(extents,
                                                           view.size),
                             key=lambda e: e.offset)
        snap = view.info.get('snapshot')
        writer = Writer(out, {
            'volume': ref.split('@', 1)[0], 'size': view.size,
            'from_snapshot': older.split('@', 1)[-1] if older else None,
            'to_snapshot': snap['name'] if snap else None})
        reads = [(e.offset + at, min(MAX_DATA, e.length - at))
                 for e in extents if e.kind == diff_mod.KIND_DATA
                 for at in range(0, e.length, MAX_DATA)]
        pending = {}

        def start(i):
            if i < len(reads):
                pending[i] = asyncio.ensure_future(view.read(*reads[i]))
        for i in range(PARALLEL):
            start(i)
        i = 0
        try:
            for e in extents:
                if e.kind == diff_mod.KIND_ZERO:
                    writer.zero(e.offset, e.length)
                    continue
                end = e.offset + e.length
                while i < len(reads) and reads[i][0] < end:
                    data = await pending.pop(i)
                    start(i + PARALLEL)
                    writer.data(reads[i][0], data)
                    if progress:
                        progress(len(data))
                    i += 1
        finally:
            for task in pending.values():
                task.cancel()
            if pending:
                await asyncio.gather(*pending.values(),
                                     return_exceptions=True)
        writer.end()
        return writer
    finally:
        await view.close()


async def import_diff(cluster, src, volume, progress=None):
    """Apply the stream read from ``src`` to ``volume`` (see the module);
    return the stream's header.  The volume is opened for writing first
    (refused while another client writes it); an incremental stream
    applies only to a volume that has not changed since the stream's
    older snapshot.  ``progress(n)`` is called with the bytes applied."""
    loop = asyncio.get_running_loop()
    # The stream is read in a worker thread: a slow pipe must not stall
    # the loop, which renews the volume's lease.
    reader = await loop.run_in_executor(None, Reader, src)
    header = reader.header
    older, newer = header.get('from_snapshot'), header.get('to_snapshot')
    if newer is not None:
        problem = names.name_problem('the stream\'s newer snapshot name',
                                     newer)
        if problem:
            raise StreamError(problem)
    info = await cluster.master.volume(volume)
    snaps = {s['name'] for s in await cluster.master.snapshots(info['id'])}
    if older is not None and older not in snaps:
        raise exception.InvalidArgument(
            reason='volume %s has no snapshot %s, which this stream starts '
                   'from: apply the stream that ends at it first'
                   % (volume, older))
    if newer is not None and newer in snaps:
        raise exception.InvalidArgument(
            reason='volume %s already has snapshot %s, which this stream '
                   'ends at: it was applied already' % (volume, newer))
    if reader.size < info['size']:
        raise exception.InvalidArgument(
            reason='the stream is of a volume of %d bytes; %s has %d: '
                   'shrink it first (ursa volume resize --force) if that '
                   'is meant' % (reader.size, volume, info['size']))
    vol = await cluster.open_volume(info['id'], writable=True)
    try:
        if older is not None:
            await _unchanged_since(cluster, vol, info, older)
        guard = 'import-diff-%s' % uuid.uuid4().hex[:12]
        await cluster.create_snapshot(info['id'], guard)
    except BaseException:
        await vol.close()
        raise
    try:
        if reader.size > vol.size:
            await cluster.master.resize(info['id'], reader.size, False)
            await vol.refresh()
        await _apply(vol, reader, progress)
        await vol.flush()
        if newer is not None:
            # Taken while the lease is held: nobody else wrote since.
            await cluster.create_snapshot(info['id'], newer)
    except BaseException as e:
        LOG.warning('Volume %s: the diff stream was not applied (%s); '
                    'reverting it to snapshot %s', volume, e, guard)
        await _finish(_undo(cluster, vol, info, guard))
        raise
    await vol.close()
    try:
        await cluster.delete_snapshot('%s@%s' % (info['id'], guard))
    except exception.UrsaError as e:
        LOG.warning('Volume %s: the stream is applied, but its snapshot %s '
                    'was not deleted (%s): delete it with ursa snapshot '
                    'delete', volume, guard, e)
    return header


async def _unchanged_since(cluster, vol, info, older):
    """Refuse an incremental stream onto a volume written since the
    stream's older snapshot: it would not leave the source's state.  The
    blocks the chunk servers call changed are compared byte for byte
    (a revert, such as a refused stream's undo, rewrites blocks with the
    bytes they held)."""
    snap = await cluster.master.snapshot('%s@%s' % (info['id'], older))
    changed = await diff_mod.changed_extents(
        vol, diff_mod.since_of(vol, snap))
    if not changed:
        return
    view = await cluster.open_snapshot(snap['id'])
    try:
        for e in changed:
            for at in range(0, e.length, MAX_DATA):
                n = min(MAX_DATA, e.length - at)
                offset = e.offset + at
                then = await view.read(offset, n) \
                    if offset + n <= view.size else None
                if then is None or await vol.read(offset, n) != then:
                    raise exception.InvalidArgument(
                        reason='volume %s changed since snapshot %s '
                               '(first at byte %d): the stream applies to '
                               'what %s holds; revert the volume to it '
                               'first (ursa volume revert %s %s)'
                               % (info['name'], older, offset, older,
                                  info['name'], older))
    finally:
        await view.close()


async def _apply(vol, reader, progress):
    """Write the stream's extents, up to PARALLEL writes in flight (each
    record is checked before it is written; a bad one fails the
    import, which the caller undoes)."""
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(PARALLEL)
    tasks = set()
    failed = []

    async def one(offset, what):
        try:
            if isinstance(what, int):
                await vol.write_zeroes(offset, what)
                n = what
            else:
                await vol.write(offset, what)
                n = len(what)
            if progress:
                progress(n)
        except BaseException as e:      # noqa: BLE001 - raised below
            failed.append(e)
        finally:
            sem.release()

    extents = reader.extents()
    try:
        while not failed:
            item = await loop.run_in_executor(None, next, extents, None)
            if item is None:
                break
            await sem.acquire()
            t = asyncio.ensure_future(one(*item))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
    finally:
        if tasks:
            await asyncio.wait(list(tasks))
    if failed:
        raise failed[0]


async def _finish(coro):
    """Run ``coro`` to its end, whatever cancels the caller meanwhile
    (a Ctrl-C while an import is undone must not leave it half done)."""
    task = asyncio.ensure_future(coro)
    while True:
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise


async def _undo(cluster, vol, info, guard):
    """Put ``vol`` back as it was at snapshot ``guard`` (its size too),
    then delete that snapshot."""
    try:
        await vol.close()
    except exception.UrsaError as e:
        LOG.warning('Volume %s: closing it failed (%s)', info['name'], e)
    await cluster.revert(info['id'], guard)
    current = await cluster.master.volume(info['id'])
    if current['size'] != info['size']:
        await cluster.resize(info['id'], info['size'], force=True)
    await cluster.delete_snapshot('%s@%s' % (info['id'], guard))

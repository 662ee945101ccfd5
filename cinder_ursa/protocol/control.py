"""Sans-I/O codec of the data protocol's control messages: what the master
asks of chunk servers (FENCE, SNAPSHOT, REVERT, DELETE), what a chunk's
state is (CHUNK_INFO, INVENTORY, ENTRIES), REPAIR, REBUILD and RESYNC, with
their replies, and the TERM a master claims on each of its connections.

Framing, authentication, the data requests (READ, WRITE, REPLICATE,
FLUSH) and the error replies are in :mod:`.codec`.
"""

import struct

from cinder_ursa import exception
from cinder_ursa.protocol.chunkfile import ENTRY
from cinder_ursa.protocol.codec import _STATUS
from cinder_ursa.protocol.codec import _U32
from cinder_ursa.protocol.codec import _U64
from cinder_ursa.protocol.codec import CHUNK_INFO
from cinder_ursa.protocol.codec import DELETE
from cinder_ursa.protocol.codec import ENTRIES
from cinder_ursa.protocol.codec import FENCE
from cinder_ursa.protocol.codec import FLAG_DEEP
from cinder_ursa.protocol.codec import FLAG_DRY_RUN
from cinder_ursa.protocol.codec import FLAG_GC
from cinder_ursa.protocol.codec import FLAG_JOIN
from cinder_ursa.protocol.codec import INVENTORY
from cinder_ursa.protocol.codec import OK
from cinder_ursa.protocol.codec import REBUILD
from cinder_ursa.protocol.codec import REPAIR
from cinder_ursa.protocol.codec import REPLY
from cinder_ursa.protocol.codec import RESYNC
from cinder_ursa.protocol.codec import REVERT
from cinder_ursa.protocol.codec import SNAPSHOT
from cinder_ursa.protocol.codec import TERM
from cinder_ursa.protocol.codec import _check
from cinder_ursa.protocol.codec import _frame
from cinder_ursa.protocol.codec import _uuid_bytes
from cinder_ursa.protocol.codec import _uuid_str
from cinder_ursa.protocol.codec import reply_status

# Fixed parts of the request and reply bodies.
ALL_CHUNKS = 0xFFFFFFFFFFFFFFFF  # DELETE of a whole volume
MAX_TERM = 2 ** 63 - 1          # a master term (the database's BigInteger)
_FENCE = struct.Struct('!16sQ')            # volume, generation
_DELETE = struct.Struct('!16sQ')           # volume, index or ALL_CHUNKS
_CHUNK_INFO = struct.Struct('!16sQ')       # volume, index
_SNAPSHOT = struct.Struct('!16sQI')        # volume, sequence, live count
_REVERT = struct.Struct('!16sQQ')          # volume, snapshot, sequence
_INVENTORY = struct.Struct('!16s')         # volume (all zeros: every one)
# volume, index, epoch, first block, block count
_REPAIR = struct.Struct('!16sQQII')
# Then, optionally, the snapshot layer to repair (its sequence; absent or
# 0: the head): a body without it is a repair of the head, as before.
_REPAIR_LAYER = struct.Struct('!Q')
MAX_REPAIR_BLOCKS = 4096                   # 16 MiB per REPAIR
_REBUILD = struct.Struct('!16sQQQ')        # volume, index, epoch, target
_RESYNC = struct.Struct('!16sQQ')          # volume, index, epoch
# volume, index, epoch, allocated bytes, stale, layer count (then the
# layers' sequences, u64 each)
_INV_ENTRY = struct.Struct('!16sQQQBH')
# status, epoch, allocated, layers digest, nblocks
_INFO_OK = struct.Struct('!HQQII')
MAX_LIVE = 65536                           # live snapshots per SNAPSHOT
_ENTRIES = struct.Struct('!16sQII')        # volume, index, first, count
MAX_ENTRY_BLOCKS = 4096                    # blocks per ENTRIES (16 MiB)
# status, epoch, blocks in use, table count (then per table: layer
# sequence, 0 for the head, and entry bytes, then the entries)
_ENTRIES_OK = struct.Struct('!HQQI')
_TABLE = struct.Struct('!QI')


def encode_fence(req_id, volume, generation):
    return _frame(FENCE, req_id, _FENCE.pack(_uuid_bytes(volume),
                                             generation))


def decode_fence(body):
    _check(body, _FENCE, 'FENCE')
    vol, gen = _FENCE.unpack_from(body)
    return _uuid_str(vol), gen


def encode_delete(req_id, volume, index=ALL_CHUNKS):
    return _frame(DELETE, req_id, _DELETE.pack(_uuid_bytes(volume), index))


def decode_delete(body):
    _check(body, _DELETE, 'DELETE')
    vol, index = _DELETE.unpack_from(body)
    return _uuid_str(vol), index


def encode_chunk_info(req_id, volume, index, deep=False):
    """CHUNK_INFO of a replica; ``deep``: the CRCs are those of the data
    read now, and the reply lists the torn blocks (whose data does not
    match their stored CRC)."""
    return _frame(CHUNK_INFO, req_id, _CHUNK_INFO.pack(_uuid_bytes(volume),
                                                       index),
                  FLAG_DEEP if deep else 0)


def decode_chunk_info(body):
    _check(body, _CHUNK_INFO, 'CHUNK_INFO')
    vol, index = _CHUNK_INFO.unpack_from(body)
    return _uuid_str(vol), index


def encode_snapshot(req_id, volume, seq, live=(), gc=False, dry_run=False):
    """Tell a chunk server the volume's snapshot sequence is now ``seq``;
    with ``gc``, also drop what no snapshot in ``live`` needs (``dry_run``:
    only count it, the reply carries the count as a u64)."""
    live = sorted(live)
    body = _SNAPSHOT.pack(_uuid_bytes(volume), seq, len(live))
    body += b''.join(_U64.pack(x) for x in live)
    flags = (FLAG_GC if gc or dry_run else 0) | (FLAG_DRY_RUN if dry_run
                                                  else 0)
    return _frame(SNAPSHOT, req_id, body, flags)


def decode_snapshot(body):
    _check(body, _SNAPSHOT, 'SNAPSHOT')
    vol, seq, n = _SNAPSHOT.unpack_from(body)
    if n > MAX_LIVE or len(body) != _SNAPSHOT.size + 8 * n:
        raise exception.ProtocolError(reason='SNAPSHOT live list of %d '
                                      'entries does not match its body' % n)
    live = [_U64.unpack_from(body, _SNAPSHOT.size + 8 * i)[0]
            for i in range(n)]
    return _uuid_str(vol), seq, live


def encode_revert(req_id, volume, snap, seq):
    return _frame(REVERT, req_id, _REVERT.pack(_uuid_bytes(volume), snap,
                                               seq))


def decode_revert(body):
    _check(body, _REVERT, 'REVERT')
    vol, snap, seq = _REVERT.unpack_from(body)
    return _uuid_str(vol), snap, seq


class RepairRequest:
    __slots__ = ('volume', 'index', 'epoch', 'first', 'count', 'layer')

    def __init__(self, volume, index, epoch, first, count, layer=0):
        self.volume, self.index, self.epoch = volume, index, epoch
        self.first, self.count, self.layer = first, count, layer


def encode_repair(req_id, volume, index, epoch, first, count, layer=0):
    """Ask a chunk's primary to make blocks ``first .. first+count-1``
    of the head (``layer`` 0) or of a snapshot layer (its sequence)
    identical and valid on every replica (it pushes its own, or the first
    valid copy it finds)."""
    body = _REPAIR.pack(_uuid_bytes(volume), index, epoch, first, count)
    if layer:
        body += _REPAIR_LAYER.pack(layer)
    return _frame(REPAIR, req_id, body)


def decode_repair(body):
    _check(body, _REPAIR, 'REPAIR')
    vol, index, epoch, first, count = _REPAIR.unpack_from(body)
    if not 0 < count <= MAX_REPAIR_BLOCKS:
        raise exception.ProtocolError(reason='REPAIR of %d blocks (1 to %d)'
                                      % (count, MAX_REPAIR_BLOCKS))
    layer = 0
    if len(body) >= _REPAIR.size + _REPAIR_LAYER.size:
        layer = _REPAIR_LAYER.unpack_from(body, _REPAIR.size)[0]
    return RepairRequest(_uuid_str(vol), index, epoch, first, count, layer)


class RebuildRequest:
    __slots__ = ('volume', 'index', 'epoch', 'target')

    def __init__(self, volume, index, epoch, target):
        self.volume, self.index, self.epoch = volume, index, epoch
        self.target = target


def encode_rebuild(req_id, volume, index, epoch, target):
    """Ask a chunk's primary to give chunk server ``target`` a full copy
    of the chunk and make it a replica; the reply carries the bytes
    copied (a u64)."""
    return _frame(REBUILD, req_id, _REBUILD.pack(_uuid_bytes(volume), index,
                                                 epoch, target))


def decode_rebuild(body):
    _check(body, _REBUILD, 'REBUILD')
    vol, index, epoch, target = _REBUILD.unpack_from(body)
    return RebuildRequest(_uuid_str(vol), index, epoch, target)


def encode_entries(req_id, volume, index, first, count, join=False):
    """The metadata entries of blocks ``first .. first+count-1`` of a
    copy, of its head and of every layer: what a chunk's primary compares
    with its own to copy only the blocks that differ.  ``join``: the copy
    is about to be brought up to date and serves no reads from now on
    (``count`` may then be 0)."""
    return _frame(ENTRIES, req_id, _ENTRIES.pack(_uuid_bytes(volume), index,
                                                 first, count),
                  FLAG_JOIN if join else 0)


def decode_entries(body):
    """(volume, index, first, count)."""
    _check(body, _ENTRIES, 'ENTRIES')
    vol, index, first, count = _ENTRIES.unpack_from(body)
    if count > MAX_ENTRY_BLOCKS:
        raise exception.ProtocolError(reason='ENTRIES of %d blocks (at most '
                                      '%d)' % (count, MAX_ENTRY_BLOCKS))
    return _uuid_str(vol), index, first, count


def encode_entries_ok(req_id, epoch, nblocks, tables):
    """``tables``: [(layer sequence or 0 for the head, entry bytes)]."""
    parts = [_ENTRIES_OK.pack(OK, epoch, nblocks, len(tables))]
    for layer, raw in tables:
        parts.append(_TABLE.pack(layer, len(raw)))
        parts.append(bytes(raw))
    return _frame(ENTRIES | REPLY, req_id, b''.join(parts))


def decode_entries_ok(body):
    """(epoch, blocks in use, {layer: entry bytes})."""
    reply_status(body)
    _check(body, _ENTRIES_OK, 'ENTRIES reply')
    _, epoch, nblocks, n = _ENTRIES_OK.unpack_from(body)
    pos, tables = _ENTRIES_OK.size, {}
    for _ in range(n):
        if len(body) < pos + _TABLE.size:
            raise exception.ProtocolError(reason='ENTRIES reply truncated')
        layer, size = _TABLE.unpack_from(body, pos)
        pos += _TABLE.size
        if size % ENTRY or len(body) < pos + size:
            raise exception.ProtocolError(reason='ENTRIES reply truncated')
        tables[layer] = bytes(body[pos:pos + size])
        pos += size
    if pos != len(body):
        raise exception.ProtocolError(reason='ENTRIES reply has %d trailing '
                                      'bytes' % (len(body) - pos))
    return epoch, nblocks, tables


class ResyncRequest:
    __slots__ = ('volume', 'index', 'epoch')

    def __init__(self, volume, index, epoch):
        self.volume, self.index, self.epoch = volume, index, epoch


def encode_resync(req_id, volume, index, epoch):
    """Ask a chunk's primary to compare every replica's blocks with its
    own and make those that differ identical (after a crash); the reply
    carries the blocks made identical (a u64)."""
    return _frame(RESYNC, req_id, _RESYNC.pack(_uuid_bytes(volume), index,
                                               epoch))


def decode_resync(body):
    _check(body, _RESYNC, 'RESYNC')
    vol, index, epoch = _RESYNC.unpack_from(body)
    return ResyncRequest(_uuid_str(vol), index, epoch)


def encode_term(req_id, term):
    """A master's leadership term, sent first on each connection to a
    chunk server: the chunk server remembers the newest term it has seen
    and refuses every request of a connection whose term is older (its
    master was deposed).  The reply carries the chunk server's newest
    term (a u64): newer than the one claimed, the claim was refused."""
    return _frame(TERM, req_id, _U64.pack(term))


def decode_term(body):
    _check(body, _U64, 'TERM')
    term = _U64.unpack_from(body)[0]
    if term > MAX_TERM:
        raise exception.ProtocolError(reason='TERM %d is above %d, the '
                                      'highest there is' % (term, MAX_TERM))
    return term


def encode_inventory(req_id, volume=None):
    raw = _uuid_bytes(volume) if volume else bytes(16)
    return _frame(INVENTORY, req_id, _INVENTORY.pack(raw))


def decode_inventory(body):
    _check(body, _INVENTORY, 'INVENTORY')
    raw = _INVENTORY.unpack_from(body)[0]
    return _uuid_str(raw) if any(raw) else None


def encode_chunk_info_ok(req_id, epoch, allocated, digest, crcs,
                         torn=None):
    """``torn`` (a deep CHUNK_INFO): the blocks whose data does not match
    their stored CRC."""
    body = _INFO_OK.pack(OK, epoch, allocated, digest, len(crcs))
    body += struct.pack('!%dI' % len(crcs), *crcs)
    if torn is not None:
        body += _U32.pack(len(torn)) + struct.pack('!%dI' % len(torn),
                                                   *torn)
    return _frame(CHUNK_INFO | REPLY, req_id, body)


def encode_inventory_ok(req_id, entries):
    """``entries``: (volume, index, epoch, stale, allocated, layers)."""
    parts = [_STATUS.pack(OK), _U32.pack(len(entries))]
    for vol, idx, epoch, stale, allocated, layers in entries:
        parts.append(_INV_ENTRY.pack(_uuid_bytes(vol), idx, epoch, allocated,
                                     1 if stale else 0, len(layers)))
        parts.extend(_U64.pack(n) for n in layers)
    return _frame(INVENTORY | REPLY, req_id, b''.join(parts))


def decode_inventory_ok(body):
    reply_status(body)
    if len(body) < 6:
        raise exception.ProtocolError(reason='INVENTORY reply truncated')
    n = _U32.unpack_from(body, 2)[0]
    pos, out = 6, []
    for _ in range(n):
        if len(body) < pos + _INV_ENTRY.size:
            raise exception.ProtocolError(reason='INVENTORY reply truncated')
        vol, idx, epoch, allocated, stale, nl = _INV_ENTRY.unpack_from(body,
                                                                       pos)
        pos += _INV_ENTRY.size
        if len(body) < pos + 8 * nl:
            raise exception.ProtocolError(reason='INVENTORY reply truncated')
        layers = list(struct.unpack_from('!%dQ' % nl, body, pos))
        pos += 8 * nl
        out.append((_uuid_str(vol), idx, epoch, bool(stale), allocated,
                    layers))
    if pos != len(body):
        raise exception.ProtocolError(reason='INVENTORY reply has %d '
                                      'trailing bytes' % (len(body) - pos))
    return out


def encode_u64(n):
    return _U64.pack(n)


def decode_count_ok(body):
    payload = reply_status(body)
    if len(payload) != 8:
        raise exception.ProtocolError(reason='count reply of %d bytes'
                                      % len(payload))
    return _U64.unpack_from(payload)[0]


def decode_chunk_info_ok(body, deep=False):
    """(epoch, allocated, digest, crcs), and the torn blocks when
    ``deep``."""
    reply_status(body)
    _check(body, _INFO_OK, 'CHUNK_INFO reply')
    _, epoch, allocated, digest, n = _INFO_OK.unpack_from(body)
    end = _INFO_OK.size + 4 * n
    if len(body) < end + (4 if deep else 0):
        raise exception.ProtocolError(reason='CHUNK_INFO reply truncated')
    crcs = list(struct.unpack_from('!%dI' % n, body, _INFO_OK.size))
    if not deep:
        if len(body) != end:
            raise exception.ProtocolError(reason='CHUNK_INFO reply has '
                                          'trailing bytes')
        return epoch, allocated, digest, crcs
    m = _U32.unpack_from(body, end)[0]
    if len(body) != end + 4 + 4 * m:
        raise exception.ProtocolError(reason='CHUNK_INFO reply truncated')
    torn = list(struct.unpack_from('!%dI' % m, body, end + 4))
    return epoch, allocated, digest, crcs, torn

"""The chunk file format: what a chunk server keeps on disk, as bytes.

No I/O here: the chunk store (``cinder_ursa.chunkserver.store``) writes
these files and a gateway's local reads (``cinder_ursa.client.localread``)
read them; both speak this module.

Layout of a data directory::

    server.json                         {"uuid": ...} this server's identity
    clean-shutdown                      present while stopped cleanly
    boot-id                             the machine's boot id at the last
                                        start (a crash with another one
                                        may have lost unsynced writes)
    lost-cache                          present from such a start until
                                        the master was told
    chunks/<volume id>/<index>.unverified  present while the copy's blocks
                                        are to be checked against their
                                        CRC (after such a crash)
    resyncing                           present from a start after a crash
                                        until every replica here was
                                        compared with its chunk's others
                                        (local reads stay away meanwhile)
    scrub-cursor                        the deep scrub's pass, position and
                                        counts (JSON; see chunkserver/scrub)
    chunks/<volume id>/generation       highest lease generation seen
    chunks/<volume id>/snapseq          highest snapshot sequence seen
    chunks/<volume id>/<index>.data     the chunk's current bytes (sparse)
    chunks/<volume id>/<index>.meta     8 bytes per 4 KiB block (below)
    chunks/<volume id>/<index>.s<N>.data  block versions preserved for the
    chunks/<volume id>/<index>.s<N>.meta  snapshots up to sequence N
    chunks/<volume id>/<index>.epoch    replica-set epoch last seen
    chunks/<volume id>/<index>.stale    present when the master dropped this
                                        replica; it serves nothing then

Block metadata: ``!II`` = CRC32C of the block, then ``w << 2 | state``
where ``w`` is the snapshot sequence the block's content was written at.
States of the current (head) blocks: 0 absent (never written here: zeros,
or the parent's block in a clone), 1 data, 2 zero (discarded; its data is
a punched hole).  A layer uses the same entries plus 3 = absent; an entry
of all zero bits means "not in this layer".
"""

import array
import struct
import sys

BLOCK = 4096                      # the unit of checksums and copy-on-write
ENTRY = 8                         # bytes of metadata per block
RESYNC_MARK = 'resyncing'         # in a data directory: see above
ENTRY_STRUCT = struct.Struct('!II')     # one entry: crc, word

# Block states (head and layers); LAYER_ABSENT only in layers.
ABSENT, DATA, ZERO, LAYER_ABSENT = 0, 1, 2, 3
# Not on disk: what a READ with FLAG_SINCE answers per block (see
# protocol/codec.py): UNCHANGED, or CHANGED | the block's state.
UNCHANGED, CHANGED = 0x00, 0x04


def encode_entries(crcs, words):
    """Metadata entries (big-endian crc, word pairs) of consecutive blocks;
    ``words`` is one word for all of them, or one per block.  Built with
    array slices: a 1 MiB write's 256 entries take 8 µs, not the 55 µs of
    struct.pack over an interleaved list."""
    n = len(crcs)
    if n == 1:
        return ENTRY_STRUCT.pack(crcs[0], words if isinstance(words, int)
                           else words[0])
    if isinstance(words, int):
        out = array.array('I', [words]) * (2 * n)
    else:
        out = array.array('I', bytes(8 * n))
        out[1::2] = array.array('I', words)
    out[0::2] = array.array('I', crcs)
    if sys.byteorder == 'little':
        out.byteswap()
    return out


def decode_entries(raw, count):
    """Decode ``count`` metadata entries (missing bytes are zeros)."""
    if len(raw) < ENTRY * count:
        raw = bytes(raw) + bytes(ENTRY * count - len(raw))
    return struct.unpack('!%dI' % (2 * count), raw)

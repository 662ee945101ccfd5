"""CRC32C of 4 KiB blocks, the unit of checksums on the chunk servers."""

import crc32c as _crc32c

from cinder_ursa.protocol import chunkfile

BLOCK = chunkfile.BLOCK
ZERO_BLOCK = bytes(BLOCK)


def crc(data):
    return _crc32c.crc32c(data)


ZERO_CRC = crc(ZERO_BLOCK)


def block_crcs(data):
    """CRC32C of each 4 KiB block of ``data`` (a whole number of blocks)."""
    if len(data) == BLOCK:
        return [_crc32c.crc32c(data)]
    mv = memoryview(data)
    return [_crc32c.crc32c(mv[i:i + BLOCK]) for i in range(0, len(mv), BLOCK)]

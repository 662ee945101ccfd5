"""Short-circuit reads of replicas kept by chunk servers on this host.

A gateway that is a volume's only writer (its exclusive lease holder) knows
that every replica in its current chunk map holds every write it had
acknowledged: a write is acknowledged only once all replicas of the epoch
applied it, and a replica that missed one was dropped, which the write's
reply reports (the client then fetches a new map).  Such a gateway may
therefore read a chunk straight from a replica's files on this host,
without a network hop through that chunk server, as HDFS's short-circuit
local reads do.  Reads of data being written at that moment may return the
old or the new bytes, as they may from the chunk server.

Every block read is checked against its stored CRC32C; a block that does
not match (a write landing between the data and the checksum, or a real
corruption) makes the read fall back to the chunk servers, which verify,
report and serve another replica.  Anything unexpected does the same: this
path only ever answers with verified data, or not at all.

The files are the chunk server's (see :mod:`cinder_ursa.protocol.chunkfile`
for their layout); they are opened read-only and never written here.
"""

import collections
import json
import logging
import os

from cinder_ursa.common import checksum
from cinder_ursa.protocol import chunkfile

LOG = logging.getLogger(__name__)

BLOCK = chunkfile.BLOCK
ENTRY = chunkfile.ENTRY
OPEN_CHUNKS = 256


class LocalReplicas:
    """Reads replicas of the chunk servers whose data directories are
    given (those on this host)."""

    def __init__(self, data_dirs):
        self._data_dirs = list(data_dirs)
        self._by_id = {}        # server id -> chunks directory
        self._fds = collections.OrderedDict()  # (dir, vol, idx) -> fds
        self._said = set()
        self.hits = 0
        self.fallbacks = 0

    def __bool__(self):
        return bool(self._data_dirs)

    def _uuids(self):
        """{server uuid: chunks directory}, read again each time: a chunk
        server started after the gateway, or on a new disk, is found."""
        found = {}
        for d in self._data_dirs:
            try:
                with open(os.path.join(d, 'endpoint.json')) as f:
                    found[json.load(f)['uuid']] = os.path.join(d, 'chunks')
            except (OSError, ValueError, KeyError) as e:
                if d not in self._said:
                    self._said.add(d)
                    LOG.warning('No local reads from %s yet: %s (is its '
                                'chunk server running?)', d, e)
        return found

    def bind(self, servers):
        """Learn the master's ids of the local chunk servers from its
        server list."""
        dirs = self._uuids()
        self._by_id = {s['id']: dirs[s['uuid']] for s in servers
                       if s.get('uuid') in dirs}

    def serves(self, server_id):
        return server_id in self._by_id

    def read(self, server_id, volume, index, offset, length):
        """The bytes of a chunk range from the local replica of
        ``server_id``, verified; None when they cannot be served here."""
        chunks_dir = self._by_id.get(server_id)
        if chunks_dir is None or length <= 0:
            return None
        try:
            data = self._read(chunks_dir, volume, index, offset, length)
        except OSError as e:
            LOG.debug('Local read of %s/%d failed (%s); reading through '
                      'the chunk server', volume, index, e)
            self._forget(chunks_dir, volume, index)
            data = None
        if data is None:
            self.fallbacks += 1
        else:
            self.hits += 1
        return data

    def _open(self, chunks_dir, volume, index):
        key = (chunks_dir, volume, index)
        fds = self._fds.get(key)
        if fds is not None:
            self._fds.move_to_end(key)
            return fds
        base = os.path.join(chunks_dir, volume, str(index))
        if os.path.exists(base + '.stale') or \
                os.path.exists(base + '.joining') or os.path.exists(
                    os.path.join(os.path.dirname(chunks_dir),
                                 chunkfile.RESYNC_MARK)):
            return None
        flags = os.O_RDONLY | getattr(os, 'O_CLOEXEC', 0)
        meta = os.open(base + '.meta', flags)
        try:
            data = os.open(base + '.data', flags)
        except OSError:
            os.close(meta)
            raise
        fds = self._fds[key] = (data, meta)
        while len(self._fds) > OPEN_CHUNKS:
            _, old = self._fds.popitem(last=False)
            for fd in old:
                os.close(fd)
        return fds

    def _forget(self, chunks_dir, volume, index):
        fds = self._fds.pop((chunks_dir, volume, index), None)
        for fd in fds or ():
            os.close(fd)

    def _read(self, chunks_dir, volume, index, offset, length):
        fds = self._open(chunks_dir, volume, index)
        if fds is None:
            return None
        data_fd, meta_fd = fds
        first = offset // BLOCK
        count = (offset + length - 1) // BLOCK - first + 1
        meta = chunkfile.decode_entries(
            os.pread(meta_fd, ENTRY * count, ENTRY * first), count)
        states = [w & 3 for w in meta[1::2]]
        if chunkfile.LAYER_ABSENT in states:
            return None
        if chunkfile.DATA not in states:
            return bytes(length)
        buf = os.pread(data_fd, count * BLOCK, first * BLOCK)
        if len(buf) < count * BLOCK:
            buf += bytes(count * BLOCK - len(buf))
        crcs = checksum.block_crcs(buf)
        if all(st == chunkfile.DATA for st in states):
            if list(crcs) != list(meta[0::2]):
                return None
        else:
            out = bytearray(buf)
            for i, st in enumerate(states):
                if st == chunkfile.DATA:
                    if crcs[i] != meta[2 * i]:
                        return None
                else:
                    out[i * BLOCK:(i + 1) * BLOCK] = bytes(BLOCK)
            buf = bytes(out)
        start = offset - first * BLOCK
        if start == 0 and len(buf) == length:
            return buf
        return buf[start:start + length]

    def close(self):
        for fds in self._fds.values():
            for fd in fds:
                os.close(fd)
        self._fds.clear()

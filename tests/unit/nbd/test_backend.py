"""The Backend seam: transmission flags from capabilities, and
VolumeBackend over an in-memory stand-in for the client's Volume."""

import asyncio
import errno

import pytest

from cinder_ursa.client import volume as volume_mod
from cinder_ursa.nbd import backend as backend_mod
from cinder_ursa.nbd import protocol as p


class FakeVolume:
    """What VolumeBackend uses of client.volume.Volume, in memory."""

    def __init__(self, size):
        self.name = 'vol1'
        self.size = size
        self.data = bytearray(size)
        self.calls = []

    async def read(self, offset, length):
        return bytes(self.data[offset:offset + length])

    async def write(self, offset, data, fua=False):
        self.calls.append(('write', offset, len(data), fua))
        self.data[offset:offset + len(data)] = data

    def write_soon(self, offset, data, fua, callback):
        self.calls.append(('write_soon', offset, len(data), fua))
        return False

    async def write_zeroes(self, offset, length, fua=False):
        self.calls.append(('write_zeroes', offset, length, fua))
        self.data[offset:offset + length] = bytes(length)

    async def flush(self):
        self.calls.append(('flush',))

    async def prefetch_map(self, offset, length):
        self.calls.append(('prefetch_map', offset, length))

    async def block_status(self, offset, length):
        return [(4096, volume_mod.DATA), (length - 4096, volume_mod.ZERO)]

    async def close(self):
        self.calls.append(('close',))


class Minimal(backend_mod.Backend):
    def size(self):
        return 1024

    async def pread(self, offset, length):
        return bytes(length)


def run(coro):
    return asyncio.run(coro)


def test_a_backend_that_says_no_to_everything_is_read_only():
    assert Minimal().flags() == p.TF_HAS_FLAGS | p.TF_READ_ONLY
    assert not Minimal().pwrite_nowait(0, b'x', False, None)
    with pytest.raises(OSError) as e:
        run(Minimal().pwrite(0, b'x', False))
    assert p.nbd_error(e.value) == p.NBD_EPERM


def test_volume_backend_flags_are_todays():
    vol = FakeVolume(1 << 20)
    rw = backend_mod.VolumeBackend(vol, read_only=False)
    ro = backend_mod.VolumeBackend(vol, read_only=True)
    assert rw.flags() == 0x0D6D
    assert ro.flags() == 0x050F
    assert (rw.name, rw.size()) == ('vol1', 1 << 20)


def test_volume_backend_data_calls():
    vol = FakeVolume(1 << 20)
    b = backend_mod.VolumeBackend(vol, read_only=False)
    run(b.pwrite(4096, b'abc', True))
    assert run(b.pread(4096, 3)) == b'abc'
    assert not b.pwrite_nowait(0, b'x', False, None)
    run(b.trim(0, 8192, False))
    run(b.zero(0, 4096, True, True, False))    # may trim: deallocate
    run(b.flush())
    run(b.cache(0, 4096))
    run(b.close())
    assert vol.calls == [('write', 4096, 3, True),
                         ('write_soon', 0, 1, False),
                         ('write_zeroes', 0, 8192, False),
                         ('write_zeroes', 0, 4096, True),
                         ('flush',), ('prefetch_map', 0, 4096), ('close',)]


def test_zeroes_that_must_stay_allocated():
    vol = FakeVolume(16 << 20)
    vol.data[:] = b'\xff' * len(vol.data)
    b = backend_mod.VolumeBackend(vol, read_only=False)
    run(b.zero(1, 9 << 20, False, False, False))
    assert [c[:3] for c in vol.calls] == [
        ('write', 1, 4 << 20), ('write', 1 + (4 << 20), 4 << 20),
        ('write', 1 + (8 << 20), 1 << 20)]
    assert vol.data[1:1 + (9 << 20)] == bytes(9 << 20)
    assert vol.data[0] == 0xff


def test_fast_zero_of_allocated_zeroes_is_enotsup():
    vol = FakeVolume(1 << 20)
    b = backend_mod.VolumeBackend(vol, read_only=False)
    with pytest.raises(OSError) as e:
        run(b.zero(0, 4096, False, False, True))
    assert e.value.errno == errno.ENOTSUP and vol.calls == []
    flags = p.CMD_FLAG_NO_HOLE | p.CMD_FLAG_FAST_ZERO
    assert p.nbd_error(e.value, flags) == p.NBD_ENOTSUP


def test_extents_are_base_allocation_states():
    b = backend_mod.VolumeBackend(FakeVolume(1 << 20), read_only=True)
    assert run(b.extents(0, 1 << 20)) == [
        (4096, 0), ((1 << 20) - 4096, p.STATE_HOLE | p.STATE_ZERO)]

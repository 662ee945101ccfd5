"""Chunk map arithmetic at stripe and chunk boundaries."""

import random

import pytest

from cinder_ursa import exception
from cinder_ursa.client.layout import Extent
from cinder_ursa.client.layout import Layout

MiB = 1024 * 1024


def reference_location(layout, offset):
    """Byte-by-byte definition of the striping (slow, obviously right)."""
    unit_no = offset // layout.unit
    stripe = unit_no // layout.count
    obj_set = stripe // layout.units_per_chunk
    index = obj_set * layout.count + unit_no % layout.count
    return index, (stripe % layout.units_per_chunk) * layout.unit + \
        offset % layout.unit


def test_plain_chunking_splits_at_chunk_boundaries():
    lay = Layout(10 * MiB, 4 * MiB)
    assert lay.chunks == 3
    assert lay.extents(4 * MiB - 10, 20) == [
        Extent(0, 4 * MiB - 10, 10, 0), Extent(1, 0, 10, 10)]
    assert lay.extents(0, 10 * MiB) == [
        Extent(0, 0, 4 * MiB, 0), Extent(1, 0, 4 * MiB, 4 * MiB),
        Extent(2, 0, 2 * MiB, 8 * MiB)]


def test_striping_round_robin_over_an_object_set():
    lay = Layout(64 * MiB, 4 * MiB, 64 * 1024, 4)
    assert lay.chunks == 16
    ex = lay.extents(0, 5 * 64 * 1024)
    assert [(e.index, e.chunk_offset) for e in ex] == [
        (0, 0), (1, 0), (2, 0), (3, 0), (0, 64 * 1024)]
    # The second object set starts after stripe_count full chunks.
    ex = lay.extents(16 * MiB, 4096)
    assert ex == [Extent(4, 0, 4096, 0)]


def test_partial_object_set_at_the_end():
    lay = Layout(5 * MiB, 1 * MiB, 4096, 4)
    assert lay.chunks == 8  # two object sets of four chunks
    assert lay.extents(5 * MiB - 4096, 4096)[0].index < 8


@pytest.mark.parametrize('seed', range(5))
def test_extents_match_the_byte_level_definition(seed):
    rng = random.Random(seed)
    lay = Layout(48 * MiB, 4 * MiB, 1 << rng.randrange(12, 23),
                 rng.randrange(1, 6))
    for _ in range(200):
        off = rng.randrange(lay.size)
        length = rng.randrange(1, min(lay.size - off, 3 * MiB) + 1)
        covered = 0
        for e in lay.extents(off, length):
            assert e.buf_offset == covered
            for probe in (0, e.length - 1):
                assert (e.index, e.chunk_offset + probe) == \
                    reference_location(lay, off + e.buf_offset + probe)
            assert e.chunk_offset + e.length <= lay.chunk_size
            assert e.index < lay.chunks
            covered += e.length
        assert covered == length


def test_out_of_range():
    lay = Layout(8 * MiB, 4 * MiB)
    with pytest.raises(exception.OutOfRange):
        lay.extents(8 * MiB - 1, 2)
    with pytest.raises(exception.OutOfRange):
        lay.extents(-1, 1)
    assert lay.extents(8 * MiB, 0) == []

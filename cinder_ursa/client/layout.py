"""Where each byte of a volume lives: striping over chunks.

A volume is cut into stripe units of ``stripe_unit`` bytes dealt round
robin over ``stripe_count`` chunks (an "object set", as in Ceph RBD); when
those chunks are full the next set of ``stripe_count`` chunks begins.  With
the default ``stripe_count = 1`` and ``stripe_unit = chunk_size`` this is
plain chunking: byte ``o`` is in chunk ``o // chunk_size``.
"""

from cinder_ursa import exception


class Extent:
    """``length`` bytes at ``chunk_offset`` in chunk ``index``, which are
    bytes ``buf_offset ..`` of the caller's buffer."""

    __slots__ = ('index', 'chunk_offset', 'length', 'buf_offset')

    def __init__(self, index, chunk_offset, length, buf_offset):
        self.index = index
        self.chunk_offset = chunk_offset
        self.length = length
        self.buf_offset = buf_offset

    def __eq__(self, other):
        return (self.index, self.chunk_offset, self.length,
                self.buf_offset) == (other.index, other.chunk_offset,
                                     other.length, other.buf_offset)

    def __repr__(self):
        return 'Extent(%d, %d, %d, %d)' % (self.index, self.chunk_offset,
                                           self.length, self.buf_offset)


class Layout:

    def __init__(self, size, chunk_size, stripe_unit=None, stripe_count=1):
        stripe_unit = stripe_unit or chunk_size
        if chunk_size % stripe_unit or stripe_count < 1:
            raise exception.InvalidArgument(
                reason='stripe unit must divide the chunk size and stripe '
                       'count be positive')
        self.size = size
        self.chunk_size = chunk_size
        self.unit = stripe_unit
        self.count = stripe_count
        self.units_per_chunk = chunk_size // stripe_unit
        set_bytes = chunk_size * stripe_count
        self.chunks = -(-size // set_bytes) * stripe_count

    @classmethod
    def for_volume(cls, vol):
        return cls(vol['size'], vol['chunk_size'], vol['stripe_unit'],
                   vol['stripe_count'])

    def check(self, offset, length):
        if offset < 0 or length < 0 or offset + length > self.size:
            raise exception.OutOfRange(
                reason='bytes %d..%d are outside the volume of %d bytes'
                % (offset, offset + length, self.size))

    def extents(self, offset, length):
        """Split ``[offset, offset+length)`` into per-chunk extents, merging
        neighbours that are contiguous in both the chunk and the buffer."""
        self.check(offset, length)
        out = []
        pos = 0
        unit, count = self.unit, self.count
        while pos < length:
            o = offset + pos
            block = o // unit
            stripe = block // count
            in_set = block % count
            obj_set = stripe // self.units_per_chunk
            index = obj_set * count + in_set
            chunk_off = (stripe % self.units_per_chunk) * unit + o % unit
            n = min(unit - o % unit, length - pos)
            last = out[-1] if out else None
            if (last is not None and last.index == index and
                    last.chunk_offset + last.length == chunk_off and
                    last.buf_offset + last.length == pos):
                last.length += n
            else:
                out.append(Extent(index, chunk_off, n, pos))
            pos += n
        return out

    def volume_offset(self, index, chunk_offset):
        """The volume offset of byte ``chunk_offset`` of chunk ``index``
        (the inverse of :meth:`extents`)."""
        obj_set, in_set = divmod(index, self.count)
        stripe_in_chunk, within = divmod(chunk_offset, self.unit)
        stripe = obj_set * self.units_per_chunk + stripe_in_chunk
        return (stripe * self.count + in_set) * self.unit + within

    def volume_ranges(self, index, start, end):
        """[(volume offset, length)] of bytes ``start .. end`` of chunk
        ``index``: one per stripe unit they touch (contiguous in the
        volume only within a unit), clipped to the volume's size."""
        out = []
        while start < end:
            n = min(end, (start // self.unit + 1) * self.unit) - start
            vo = self.volume_offset(index, start)
            if vo < self.size:
                n_in = min(n, self.size - vo)
                if out and out[-1][0] + out[-1][1] == vo:
                    out[-1] = (out[-1][0], out[-1][1] + n_in)
                else:
                    out.append((vo, n_in))
            start += n
        return out

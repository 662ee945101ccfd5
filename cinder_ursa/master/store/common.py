"""What the metadata records share: id lists, names of the trash and of
shared lease holders, and the validation of names, sizes, QoS limits and
of the strings kept."""

import contextvars

import sqlalchemy as sa

from cinder_ursa import exception
from cinder_ursa.common import units
from cinder_ursa.protocol import chunkfile
from cinder_ursa.protocol import names
from cinder_ursa.protocol.rest import QOS_KEYS

# Who asked for the change a store method makes: "<principal> from
# <peer address>", set by the REST layer for the request it serves (the
# database thread runs each call in its caller's context); None for the
# master's own work (the watcher, the repairer).
REQUESTER = contextvars.ContextVar('ursa_requester', default=None)


def asked():
    """Who asked for the change being committed, for its log line."""
    return REQUESTER.get() or 'the master'


def split_ids(text):
    return [int(x) for x in text.split(',') if x]


def join_ids(ids):
    return ','.join(str(i) for i in ids)


def holds_id(column, ident):
    """SQL: whether the comma-separated id list ``column`` names server
    ``ident`` (not merely an id with its digits: 1 is not in "10,11")."""
    text = str(int(ident))
    return sa.or_(column == text, column.like(text + ',%'),
                  column.like('%,' + text), column.like('%,' + text + ',%'))


def add_id(ids, ident):
    """``ids`` with ``ident`` at the end, once."""
    return ids if ident in ids else ids + [ident]


def trash_name(ident):
    return '.trash-%s' % ident


def chunk_count(vol):
    per_set = vol.chunk_size * vol.stripe_count
    sets = -(-vol.size // per_set)
    return sets * vol.stripe_count


# lease_holder of a multiattach volume whose writers share the lease.
SHARED = '(shared)'


def holder_host(holder):
    """The host a lease holder runs on.  Holders are ``<host>:<pid>:<nonce>``
    (the client library's default) or ``<agent>@<host>`` (ursa-attach)."""
    if '@' in holder:
        return holder.rsplit('@', 1)[1]
    return holder.split(':', 1)[0]


# The largest QoS limit: the clients' token buckets (client/qos.py) count
# in floats, exact for integers up to 2**53, and so are JSON numbers in
# most other languages.  2**53 a second (8 PiB/s, 9e15 IOPS) limits
# nothing real, so no useful setting is refused.
QOS_MAX = 2 ** 53


def check_volume_size(size, limit):
    """Refuse a volume size above ``limit`` ([ursa_master]
    max_volume_size), naming the limit and the option."""
    if size is not None and size > limit:
        raise exception.InvalidArgument(
            reason='size %d bytes (%s) is above the largest volume size, %d '
                   'bytes (%s); use a smaller size, or raise [ursa_master] '
                   'max_volume_size on the master if such volumes are '
                   'really wanted' % (size, units.format_size(size), limit,
                                      units.format_size(limit)))


def validate_qos(qos):
    """QoS limits: a dict of QOS_KEYS to integers from 0 (no limit) to
    QOS_MAX; returns it without the zeros."""
    if not isinstance(qos, dict):
        raise exception.InvalidArgument(reason='qos must be an object')
    out = {}
    for k, v in qos.items():
        if k not in QOS_KEYS:
            raise exception.InvalidArgument(
                reason='unknown QoS limit %r; known: %s' % (
                    k, ', '.join(QOS_KEYS)))
        # Digits as text too, but only ASCII ones, and few enough for
        # int(): it refuses "\u00b2" and more than 4300 digits.
        if isinstance(v, str) and v.isascii() and v.isdigit() and \
                len(v) <= 20:
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or \
                not 0 <= v <= QOS_MAX:
            raise exception.InvalidArgument(
                reason='QoS limit %s must be an integer from 0 (no limit) '
                       'to %d (2**53)' % (k, QOS_MAX))
        if v:
            out[k] = v
    return out


# The length of the columns of names, hosts and lease holders.
NAME_MAX = 255


def check_text(what, value, limit=NAME_MAX):
    """``value``, a string every database keeps alike, or InvalidArgument:
    1 to ``limit`` characters (its column's length: MySQL and PostgreSQL
    refuse a longer string, SQLite keeps it) and no NUL character
    (PostgreSQL can neither store one nor look one up)."""
    if not isinstance(value, str) or not value or len(value) > limit:
        raise exception.InvalidArgument(
            reason='%s must be 1 to %d characters' % (what, limit))
    check_free_text(what, value)
    return value


def check_free_text(what, value):
    """A text column's value (None, or a string of any length): no NUL
    character, which PostgreSQL cannot store."""
    if value is not None and '\x00' in value:
        raise exception.InvalidArgument(
            reason='%s may not contain NUL characters' % what)
    return value


# At most this many characters of a fenced host's reasons are kept (the
# newest).
MAX_FENCE_REASON = 4096


def fence_reasons(old, new):
    """The reasons a host is fenced for once ``new`` is added to ``old``:
    each fence that gives a reason not already there adds it, so a fence
    made on top of an operator's (nova_ha's recovery, say) is not hidden
    by it."""
    if not new or (old and new in old.split('; ')):
        return old
    merged = '%s; %s' % (old, new) if old else new
    return merged[-MAX_FENCE_REASON:]


def unstorable(ref):
    """Whether a name or id to look up cannot be in the database (a NUL
    character: PostgreSQL refuses to look it up), so it names nothing."""
    return not isinstance(ref, str) or '\x00' in ref


def check_name(what, name):
    """``name`` if it is a valid volume or snapshot name (see
    protocol/names.py), else InvalidArgument saying which characters are
    allowed."""
    problem = names.name_problem(what, name)
    if problem:
        raise exception.InvalidArgument(reason=problem)
    return name


def validate_snapshot_name(name):
    check_name('snapshot name', name)


def validate_volume(name, size, replicas, min_replicas, chunk_size,
                     stripe_unit, stripe_count):
    """Check a new volume, or a new name of one."""
    check_name('volume name', name)
    validate_geometry(size, replicas, min_replicas, chunk_size,
                      stripe_unit, stripe_count)


def validate_geometry(size, replicas, min_replicas, chunk_size,
                      stripe_unit, stripe_count):
    """Check a volume's size and layout (its name is not: a resized
    volume's may predate NAME_RE)."""
    def bad(reason):
        raise exception.InvalidArgument(reason=reason)
    if not isinstance(size, int) or size <= 0:
        bad('size must be a positive number of bytes')
    if size % chunkfile.BLOCK:
        bad('size must be a multiple of 4 KiB')
    if not 1 <= replicas <= 10:
        bad('replicas must be between 1 and 10')
    if not 1 <= min_replicas <= replicas:
        bad('min_replicas must be between 1 and replicas (%d)' % replicas)
    if chunk_size < units.Mi or chunk_size > 1024 * units.Mi or \
            chunk_size & (chunk_size - 1):
        bad('chunk size must be a power of two between 1 MiB and 1 GiB')
    if stripe_unit < chunkfile.BLOCK or chunk_size % stripe_unit or \
            stripe_unit & (stripe_unit - 1):
        bad('stripe unit must be a power of two of at least 4 KiB that '
            'divides the chunk size')
    if not 1 <= stripe_count <= 64:
        bad('stripe count must be between 1 and 64')

"""The master's REST API, without I/O: one function per endpoint.

Each function returns a :class:`Request`: the method, the path under
``PREFIX`` (every path segment quoted here, once), the JSON body, the
query parameters and the field of the reply the caller wants (``None``:
the whole reply).  The transports in ``cinder_ursa.transport.http`` send
it; :func:`error_from_body` turns an error reply back into the exception
the master raised.  Replies stay the master's JSON dicts, except a chunk
map entry, which the client library caches as a :class:`ChunkInfo`.
"""

import json
from typing import NamedTuple

from cinder_ursa import exception

PREFIX = '/v1'

# The QoS limits of a volume (the names of Cinder's QoS spec keys).
QOS_KEYS = ('read_iops_sec', 'write_iops_sec', 'total_iops_sec',
            'read_bytes_sec', 'write_bytes_sec', 'total_bytes_sec')

# RFC 3986 unreserved characters, and '@' (see quote()).
_SAFE = frozenset(b'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'
                  b'0123456789_.-~@')


class Request(NamedTuple):
    method: str
    path: str                 # under PREFIX, quoted, without the query
    body: dict = None
    params: dict = None
    result: str = None        # the reply's field to return; None: all
    # Seconds to wait for the answer, when longer than the client's
    # timeout (a registration of millions of replicas).
    timeout: float = None


class ChunkInfo:
    """One entry of a chunk map reply, as the client library caches it."""

    __slots__ = ('index', 'epoch', 'replicas')

    def __init__(self, index, epoch, replicas):
        self.index = index
        self.epoch = epoch
        # [(server id, address, port)], the primary first.
        self.replicas = replicas

    @classmethod
    def from_json(cls, c):
        return cls(c['index'], c['epoch'],
                   [(r['id'], r['address'], r['port'])
                    for r in c['replicas']])


def quote(ref):
    """A volume name or id (or ``volume@snapshot``) as one URL path
    segment, as ``urllib.parse.quote(ref, safe='@')`` does.  '@' stays as
    it is: HTTP clients normalise %40 back to '@', and the signature
    covers the path as sent."""
    return ''.join(chr(b) if b in _SAFE else '%%%02X' % b
                   for b in str(ref).encode('utf-8'))


def error_from_body(status, text):
    """The exception an error reply (HTTP ``status``, body ``text``)
    stands for: the master's own when the body names its code, else
    InternalError quoting the start of the body."""
    try:
        err = json.loads(text)['error']
        exc = exception.from_code(err['code'], err['message'])
        # A standby master names the leader (NotLeader).
        exc.leader = err.get('leader')
        if err.get('retry_after') is not None:
            # HandoverPending: seconds until the lease is taken by force.
            exc.retry_after = err['retry_after']
        return exc
    except (ValueError, KeyError, TypeError):
        return exception.InternalError(
            reason='HTTP %d from the master: %s' % (status, text[:200]))


def _vol(ref, tail=''):
    return '/volumes/%s%s' % (quote(ref), tail)


# --- cluster and chunk servers ----------------------------------------------

def cluster_status():
    return Request('GET', '/cluster')


def inventory():
    return Request('GET', '/inventory')


def servers():
    return Request('GET', '/chunkservers', result='chunkservers')


# A registration's answer is awaited this long, plus REGISTER_PER_MILLION
# seconds per million replicas listed (the master looks them up in
# slices between other requests: about 5 s a million on SQLite here).
REGISTER_TIMEOUT = 30.0
REGISTER_PER_MILLION = 30.0


def register_server(**fields):
    held = len(fields.get('chunks') or ()) + sum(
        len(v) // 2 for v in (fields.get('held') or {}).values())
    return Request('POST', '/chunkservers', fields, timeout=(
        REGISTER_TIMEOUT + REGISTER_PER_MILLION * held / 1e6))


def heartbeat(server_id, usage):
    return Request('PUT', '/chunkservers/%d/heartbeat' % server_id, usage)


def set_maintenance(server_id, on):
    return Request('PUT', '/chunkservers/%d/maintenance' % server_id,
                   {'maintenance': bool(on)}, result='server')


def server(server_id):
    return Request('GET', '/chunkservers/%d' % server_id, result='server')


def remove_server(server_id):
    """Forget a chunk server gone for good (it holds nothing needed)."""
    return Request('DELETE', '/chunkservers/%d' % server_id,
                   result='server')


def set_draining(server_id, on):
    return Request('PUT', '/chunkservers/%d/draining' % server_id,
                   {'draining': bool(on)}, result='server')


def recount_figures():
    """Count the master's kept figures again from its records (``ursa
    cluster check --repair`` does when the check found them drifted):
    what differed."""
    return Request('POST', '/cluster/recount', {}, result='recount')


def repair_now():
    """Run the repair planner once, now: the jobs it started."""
    return Request('POST', '/repair', {}, result='repair')


# --- volumes ----------------------------------------------------------------

def volumes(limit=None, marker=None, descending=False, name_prefix=None,
            name_contains=None, status=None):
    """One page of the volumes in name order (reversed with
    ``descending``): at most ``limit``, those after ``marker`` (the
    name or id of the last volume of the previous page), those whose
    name starts with ``name_prefix`` or contains ``name_contains``
    (ignoring case), whose status is ``status`` (one, or a list).  The
    whole reply: 'volumes', and 'volumes_links' when there is a next
    page (``paging.next_marker``).  Without arguments, the request of
    clients older than pagination; ``paging.Pages`` walks the pages."""
    if isinstance(status, (list, tuple)):
        status = ','.join(status)
    params = {k: v for k, v in (
        ('limit', limit), ('marker', marker),
        ('sort_dir', 'desc' if descending else None),
        ('name_prefix', name_prefix), ('name_contains', name_contains),
        ('status', status)) if v is not None}
    return Request('GET', '/volumes', params=params or None)


def volume(ref):
    return Request('GET', _vol(ref), result='volume')


def create_volume(name, size, **kwargs):
    body = {'name': name, 'size': size}
    body.update({k: v for k, v in kwargs.items() if v is not None})
    return Request('POST', '/volumes', body, result='volume')


def clone(snapshot, name, size=None, **kwargs):
    body = {'name': name, 'snapshot': snapshot, **kwargs}
    if size is not None:
        body['size'] = size
    return Request('POST', '/volumes', body, result='volume')


def delete_volume(ref):
    return Request('DELETE', _vol(ref))


def update_volume(ref, **fields):
    """Change ``name``, ``qos`` ({} removes the limits) or
    ``multiattach``."""
    return Request('PATCH', _vol(ref), fields, result='volume')


def resize(ref, size, force=None):
    """Set a volume's size; without ``force`` the body has no such field
    (growing); the client library zeroes the tail before a shrink."""
    body = {'size': size}
    if force is not None:
        body['force'] = bool(force)
    return Request('PUT', _vol(ref, '/size'), body, result='volume')


def revert(ref, snapshot):
    return Request('POST', _vol(ref, '/revert'), {'snapshot': snapshot},
                   result='volume')


def detach_parent(ref):
    return Request('POST', _vol(ref, '/detach-parent'), result='volume')


# --- chunks and leases ------------------------------------------------------

def chunk_map(volume, start, count, allocate=False):
    return Request('GET', _vol(volume, '/chunks'),
                   params={'start': start, 'count': count,
                           'allocate': int(allocate)})


def drop_replica(volume, index, server_id, epoch):
    return Request('POST', _vol(volume, '/chunks/%d/drop' % index),
                   {'server_id': server_id, 'epoch': epoch}, result='chunk')


def change_members(volume, index, action, server_id, epoch):
    """``action``: join (bring a copy up to date on ``server_id``),
    promote (the copy is up to date: a replica) or abandon (give the copy
    up), at the chunk's current ``epoch``."""
    return Request('POST', _vol(volume, '/chunks/%d/%s' % (index, action)),
                   {'server_id': server_id, 'epoch': epoch}, result='chunk')


def acquire_lease(volume, holder, force=False, ttl=None, handover=False):
    """The whole reply: 'lease' and the 'ticket' the holder writes with
    on the data protocol.  ``handover``: a live migration's destination
    (a standby attachment's host) asks the holder's host to release it
    (HandoverPending until it has; retry)."""
    body = {'holder': holder, 'force': bool(force)}
    if ttl:
        body['ttl'] = ttl
    if handover:
        body['handover'] = True
    return Request('POST', _vol(volume, '/lease'), body)


def renew_lease(volume, holder, generation, ttl):
    """The whole reply, as :func:`acquire_lease`'s (a renewed ticket)."""
    return Request('PUT', _vol(volume, '/lease'),
                   {'holder': holder, 'generation': generation, 'ttl': ttl})


def release_lease(volume, holder, generation):
    return Request('DELETE', _vol(volume, '/lease'),
                   params={'holder': holder, 'generation': generation})


def revoke_lease(ref):
    return Request('POST', _vol(ref, '/lease/revoke'), result='lease')


def lease_history(ref, limit=None):
    """A volume's lease events, oldest first; the newest ``limit`` of
    them (see lease_history.py)."""
    return Request('GET', _vol(ref, '/lease-history'),
                   params={'limit': limit} if limit is not None else None,
                   result='lease_history')


def ticket(ref, copy_up=False):
    """A read-only ticket for a volume, its snapshots and its clone
    parents (the master's ``tickets.issue`` dict: ``tickets.grant_from``
    unwraps it with the signer's key); ``copy_up``: one that may also
    copy blocks up from the parents (a flatten)."""
    return Request('POST', _vol(ref, '/tickets'),
                   {'copy_up': True} if copy_up else None, result='ticket')


# --- snapshots --------------------------------------------------------------

def snapshots(volume=None, limit=None, marker=None, descending=False,
              name_prefix=None, name_contains=None, status=None):
    """One page of the snapshots of ``volume`` (of every volume if
    None) in the order of their volume's name and their sequence, as
    :func:`volumes` (``marker``: ``volume@name`` or an id; the filters
    apply to the snapshot's name and status).  The whole reply:
    'snapshots', and 'snapshots_links' when there is a next page."""
    path = _vol(volume, '/snapshots') if volume else '/snapshots'
    req = volumes(limit, marker, descending, name_prefix, name_contains,
                  status)
    return req._replace(path=path)


def snapshot(ref):
    return Request('GET', '/snapshots/%s' % quote(ref), result='snapshot')


def create_snapshot(volume, name):
    return Request('POST', _vol(volume, '/snapshots'), {'name': name},
                   result='snapshot')


def rename_snapshot(ref, name):
    return Request('PATCH', '/snapshots/%s' % quote(ref), {'name': name},
                   result='snapshot')


def delete_snapshot(ref):
    return Request('DELETE', '/snapshots/%s' % quote(ref))


# --- attachments and hosts --------------------------------------------------

def _attachment(ref, host):
    return _vol(ref, '/attachments/%s' % quote(host))


def attachments(ref=None, host=None):
    path = _vol(ref, '/attachments') if ref else '/attachments'
    return Request('GET', path, params={'host': host} if host else None,
                   result='attachments')


def attach(ref, host, standby=False):
    """Attach a volume to ``host``; ``standby``: as a live migration's
    destination, beside the volume's attachment on the source host (its
    client takes the lease over at its first write)."""
    body = {'host': host}
    if standby:
        body['standby'] = True
    return Request('POST', _vol(ref, '/attachments'), body,
                   result='attachment')


def attachment(ref, host):
    return Request('GET', _attachment(ref, host), result='attachment')


def update_attachment(ref, host, status, path=None, error=None):
    return Request('PUT', _attachment(ref, host),
                   {'status': status, 'path': path, 'error': error},
                   result='attachment')


def detach(ref, host):
    return Request('DELETE', _attachment(ref, host))


def host(name):
    """A client host's leases and whether it is fenced."""
    return Request('GET', '/hosts/%s' % quote(name), result='host')


def fence_host(name, reason=None):
    """Revoke every lease of the host and refuse it new ones."""
    return Request('POST', '/hosts/%s/fence' % quote(name),
                   {'reason': reason}, result='fence')


def unfence_host(name):
    return Request('DELETE', '/hosts/%s/fence' % quote(name))


def host_heartbeat(name, interval, stopping=False):
    """A client host's storage heartbeat (nova-ha-agent; ``stopping``:
    its last, the agent stops on purpose); the answer says whether the
    host is fenced."""
    body = {'interval': interval}
    if stopping:
        body['stopping'] = True
    return Request('PUT', '/hosts/%s/heartbeat' % quote(name), body,
                   result='heartbeat')


def host_heartbeats():
    """How long ago each client host last beat, and how long the master
    has led."""
    return Request('GET', '/host-heartbeats', result='heartbeats')


def fenced_hosts():
    return Request('GET', '/fenced-hosts', result='fenced_hosts')


# --- principals and roles ---------------------------------------------------

def principals():
    return Request('GET', '/principals', result='principals')


def create_principal(name, role, wrapped_key, nonce):
    """A principal with a key the caller made, wrapped with the key that
    signs the request (``auth.wrap_key``)."""
    return Request('POST', '/principals', {'name': name, 'role': role,
                                           'key': wrapped_key,
                                           'nonce': nonce},
                   result='principal')


def rotate_principal(name, wrapped_key, nonce, window):
    return Request('POST', '/principals/%s/rotate' % quote(name),
                   {'key': wrapped_key, 'nonce': nonce, 'window': window},
                   result='principal')


def revoke_principal(name):
    return Request('DELETE', '/principals/%s' % quote(name))

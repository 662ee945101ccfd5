"""Exceptions of the whole project.

Three families, as the style guide asks:

* the peer said no: :class:`RemoteError` subclasses, each with a stable
  ``code`` that travels in data-protocol replies and REST error bodies;
* the caller misused the API: :class:`InvalidArgument` (also a ValueError);
* the connection failed: :class:`UrsaConnectionError` (retryable) and
  :class:`ProtocolError` (the peer spoke nonsense: drop the connection).

Every class only fills a message template, like os-brick's.
"""


class UrsaError(Exception):
    """Base class: ``message`` is a template filled from keyword arguments."""

    message = 'An unknown error occurred.'
    code = 'internal'
    http_status = 500

    def __init__(self, message=None, **kwargs):
        self.kwargs = kwargs
        if message is None:
            try:
                message = self.message % kwargs
            except (KeyError, TypeError):
                message = self.message
        self.msg = message
        super().__init__(message)


class InvalidArgument(UrsaError, ValueError):
    message = 'Invalid argument: %(reason)s'
    code = 'invalid_argument'
    http_status = 400


class MarkerNotFound(InvalidArgument):
    """A listing's ``marker`` names nothing listed (any more): HTTP 400,
    as in Cinder and Nova, under its own code so that a client walking
    the pages can step back to an earlier marker when the one it held
    was deleted or renamed meanwhile."""
    message = 'Marker not found: %(reason)s'
    code = 'marker_not_found'


class ProtocolError(UrsaError):
    """The peer sent bytes that are not our protocol; drop the connection."""

    message = 'Protocol error: %(reason)s'
    code = 'protocol_error'
    http_status = 400


class UrsaConnectionError(UrsaError):
    """A peer could not be reached or the connection broke (retryable)."""

    message = 'Cannot reach %(peer)s: %(reason)s'
    code = 'connection_error'
    http_status = 503


class UrsaTimeout(UrsaConnectionError):
    message = 'Timed out talking to %(peer)s after %(seconds)s s'
    code = 'timeout'


class RemoteError(UrsaError):
    """The remote side refused the request; ``code`` says why."""

    code = 'remote_error'


class NotAuthorized(RemoteError):
    message = 'Not authorized: %(reason)s'
    code = 'not_authorized'
    http_status = 401


class Forbidden(RemoteError):
    """Authenticated, but the principal's role does not allow this."""

    message = 'Forbidden: %(reason)s'
    code = 'forbidden'
    http_status = 403


class NotFound(RemoteError):
    message = '%(kind)s %(name)s not found'
    code = 'not_found'
    http_status = 404


class AlreadyExists(RemoteError):
    message = '%(kind)s %(name)s already exists'
    code = 'already_exists'
    http_status = 409


class Conflict(RemoteError):
    message = 'Conflict: %(reason)s'
    code = 'conflict'
    http_status = 409


class NoSpace(RemoteError):
    message = 'No space left: %(reason)s'
    code = 'no_space'
    http_status = 507


class InsufficientReplicas(RemoteError):
    message = ('Only %(have)s replica(s) available, at least %(need)s '
               'needed: %(reason)s')
    code = 'insufficient_replicas'
    http_status = 503


class Unavailable(RemoteError):
    """Part of the cluster did not answer; the operation can be retried."""

    message = 'Unavailable: %(reason)s'
    code = 'unavailable'
    http_status = 503


class StaleEpoch(RemoteError):
    """The request used an outdated replica set; refresh the chunk map."""

    message = 'Stale chunk epoch: %(reason)s'
    code = 'stale_epoch'
    http_status = 409


class StaleReplica(RemoteError):
    """This replica left the replica set and may not serve the chunk."""

    message = 'Replica is stale: %(reason)s'
    code = 'stale_replica'
    http_status = 409


class Fenced(RemoteError):
    """A newer lease generation exists: this writer has been fenced off."""

    message = 'Fenced: %(reason)s'
    code = 'fenced'
    http_status = 409


class StaleSnapshot(RemoteError):
    """A snapshot was taken since the writer last looked: refresh the
    volume (its snapshot sequence) and write again."""

    message = 'Stale snapshot sequence: %(reason)s'
    code = 'stale_snapshot'
    http_status = 409


class LeaseHeld(RemoteError):
    message = ('Volume %(volume)s is open for writing by %(holder)s until '
               '%(expires)s; wait for the lease to expire or force it')
    code = 'lease_held'
    http_status = 409


class HandoverPending(RemoteError):
    """A live migration's destination asked for a volume's lease, which
    another host holds: the master asked the holder to release it (its
    agent sees ``release_requested`` on its attachment) and takes it by
    force after ``[ursa_master] lease_handover_timeout``.  Retry the
    acquire soon; ``retry_after`` (when the master sent it) is the
    seconds left until the forced takeover."""

    message = ('Volume %(volume)s is held by %(holder)s, which was asked '
               '%(since).1f s ago to hand it over to %(requester)s; retry '
               'the acquire: the master takes the lease by force if it is '
               'not released within %(timeout)s s ([ursa_master] '
               'lease_handover_timeout)')
    code = 'handover_pending'
    http_status = 409


class ChecksumError(RemoteError):
    message = 'Checksum mismatch: %(reason)s'
    code = 'checksum_error'
    http_status = 500


class DiskError(RemoteError):
    """The chunk server's disk failed the operation (EIO and the like):
    that replica is unusable, the others may be fine."""
    message = 'Disk I/O error on a chunk server: %(reason)s'
    code = 'disk_error'
    http_status = 500


class NotLeader(RemoteError):
    message = 'This master is not the leader: %(reason)s'
    code = 'not_leader'
    http_status = 503


class OutOfRange(RemoteError, ValueError):
    message = 'Out of range: %(reason)s'
    code = 'out_of_range'
    http_status = 416


class InternalError(RemoteError):
    message = 'Internal error on the remote side: %(reason)s'
    code = 'internal'
    http_status = 500


# One table: wire/REST code -> exception class.
_BY_CODE = {cls.code: cls for cls in (
    InvalidArgument, MarkerNotFound, ProtocolError, NotAuthorized,
    Forbidden, NotFound,
    AlreadyExists, Conflict, NoSpace, InsufficientReplicas, StaleEpoch,
    StaleReplica,
    StaleSnapshot, Unavailable, Fenced, LeaseHeld, HandoverPending,
    ChecksumError, DiskError,
    NotLeader,
    OutOfRange, InternalError, UrsaTimeout, UrsaConnectionError)}


def from_code(code, message):
    """Rebuild the exception a peer reported as ``code`` with ``message``."""
    cls = _BY_CODE.get(code, InternalError)
    return cls(message)

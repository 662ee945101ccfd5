"""tooz helpers shared by the agent and the evacuator."""

import logging
import threading

from tooz import coordination

LOG = logging.getLogger(__name__)


def start(conf, member_id, heart=True):
    """A started coordinator; ``heart=False``: its owner heartbeats (and
    so knows when a heartbeat last got through)."""
    coord = coordination.get_coordinator(
        conf.coordination.backend_url, member_id.encode())
    coord.start(start_heart=heart)
    return coord


def join(coord, group, capabilities=b''):
    """Join ``group``, creating it if needed.  A member that crashed may
    still be listed under the same id (tooz's file, redis and memcached
    drivers): leave, then join again."""
    group = group.encode()
    try:
        coord.create_group(group).get()
    except coordination.GroupAlreadyExist:
        pass
    try:
        coord.join_group(group, capabilities).get()
    except coordination.MemberAlreadyExist:
        coord.leave_group(group).get()
        coord.join_group(group, capabilities).get()


def members(coord, group):
    """{member id: capabilities} of a group (an empty dict when the group
    does not exist yet).  Raises tooz.ToozError when the backend is
    unreachable."""
    group = group.encode()
    try:
        ids = coord.get_members(group).get()
    except coordination.GroupNotCreated:
        return {}
    futures = {m: coord.get_member_capabilities(group, m) for m in ids}
    out = {}
    for m, f in futures.items():
        try:
            out[m.decode()] = f.get()
        except coordination.MemberNotJoined:
            continue
    return out


# tooz passes some client errors through untranslated (redis-py's
# ConnectionError from a group call, for one).
_BACKEND_MODULES = ('tooz', 'redis', 'etcd3', 'etcd3gw', 'kazoo',
                    'pymemcache', 'grpc', 'requests', 'urllib3')


def is_backend_error(exc):
    """Whether ``exc`` means the coordination backend is unreachable."""
    return isinstance(exc, (coordination.ToozError, ConnectionError,
                            TimeoutError)) or \
        type(exc).__module__.split('.')[0] in _BACKEND_MODULES


def stop_quietly(coord, locks=()):
    """Release ``locks`` and stop a coordinator whose backend may be gone,
    without waiting: its heartbeat thread can be stuck in the client's
    retries.  A lock not released stays held as far as this process is
    concerned (tooz's file driver keeps a per-process barrier), so a later
    coordinator in the same process could never take it again."""
    def stop():
        for lock in locks:
            try:
                lock.release()
            except Exception as e:  # noqa: BLE001 - gone is gone
                LOG.debug('Releasing %s: %s', lock.name, e)
        try:
            coord.stop()
        except Exception as e:  # noqa: BLE001 - gone is gone
            LOG.debug('Stopping the coordinator: %s', e)
    threading.Thread(target=stop, name='tooz-stop', daemon=True).start()


class Connector:
    """Connects in the background: a client retrying an unreachable
    backend can block for a minute, and the caller's loop must not."""

    def __init__(self, connect):
        self._connect = connect
        self._lock = threading.Lock()
        self._thread = None
        self._done = None
        self._error = None

    def result(self):
        """The connected coordinator, or None while connecting (or after a
        failure, which is logged and retried on the next call)."""
        with self._lock:
            if self._done is not None:
                coord, self._done = self._done, None
                return coord
            if self._thread is None or not self._thread.is_alive():
                if self._error is not None:
                    LOG.error('Coordination backend unreachable: %s',
                              self._error)
                    self._error = None
                self._thread = threading.Thread(target=self._run,
                                                name='tooz-connect',
                                                daemon=True)
                self._thread.start()
        if self._thread is not None:
            self._thread.join(0.5)
        with self._lock:
            coord, self._done = self._done, None
            return coord

    def _run(self):
        try:
            coord = self._connect()
        except Exception as e:  # noqa: BLE001 - reported by result()
            with self._lock:
                self._error = e
            return
        with self._lock:
            self._done = coord

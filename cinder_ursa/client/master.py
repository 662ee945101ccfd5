"""Typed clients of the master's REST API: :class:`MasterClient`
(blocking: CLI, Cinder driver, attach agent, nova_ha) and
:class:`AsyncMasterClient` (chunk servers, client library).

Each method sends one request of ``cinder_ursa.protocol.rest`` and
returns the reply's field named there (dicts as the master sends them);
errors are the exceptions the master raised, or UrsaConnectionError /
UrsaTimeout when no master answered.
"""

from cinder_ursa import exception
from cinder_ursa.common import auth
from cinder_ursa.protocol import paging
from cinder_ursa.protocol import rest
from cinder_ursa.transport import http


def _own_create(err, existing, size, kwargs):
    """A create retried on another master after the first try was lost
    (a failover): AlreadyExists is its own work when the volume has what
    was asked (the caller's unique name, size and layout); else ``err``."""
    if not getattr(err, 'after_lost_try', False):
        raise err
    want = dict(kwargs, size=size)
    for k in ('size', 'chunk_size', 'stripe_unit', 'stripe_count',
              'replicas', 'min_replicas', 'multiattach'):
        if want.get(k) is not None and existing.get(k) != want[k]:
            raise err
    return existing


def _lease_with_ticket(reply):
    """The lease of a lease reply, with the reply's ticket (the master's
    ``tickets.issue`` dict: ``tickets.grant_from`` unwraps it) under
    'ticket' when the master sent one (a master older than tickets does
    not): callers that know nothing of tickets see the lease as before."""
    lease = dict(reply['lease'])
    if reply.get('ticket') is not None:
        lease['ticket'] = reply['ticket']
    return lease


class MasterClient:
    """Blocking client of the master (eventlet-safe)."""

    def __init__(self, urls, key, timeout=30.0, tls=None, principal=None,
                 failover_wait=http.FAILOVER_WAIT):
        # principal: (name, key) signing the requests (None: the
        # process default, transport.http.set_default_principal).
        # failover_wait: how long a call waits while the masters elect a
        # leader (0: one round over the masters).
        self._http = http.BlockingHttp(urls, key, timeout, failover_wait,
                                       tls=tls, principal=principal)

    @classmethod
    def from_key_file(cls, urls, key_file=None, key=None, timeout=30.0,
                      tls=None):
        """A client with the cluster key ``key`` or the one in
        ``key_file`` ([ursa] cluster_key / cluster_key_file)."""
        return cls(urls, auth.load_key(key_file, key), timeout, tls=tls)

    @classmethod
    def from_conf(cls, conf, timeout=30.0, failover_wait=http.FAILOVER_WAIT):
        """A client from the ``[ursa]`` options of ``conf``: master_url,
        the cluster key, the principal that signs (principal,
        principal_key_file) and the TLS files (https:// masters)."""
        u = conf.ursa
        principal = http.principal_from(u.principal, u.principal_key_file)
        key = principal[1] if principal and not (
            u.cluster_key_file or u.cluster_key) else None
        return cls(
            u.master_url, key or auth.load_key(u.cluster_key_file,
                                               u.cluster_key),
            timeout, tls=http.client_tls(u.tls_ca_file, u.tls_cert_file,
                                         u.tls_key_file),
            principal=principal, failover_wait=failover_wait)

    @property
    def urls(self):
        """The master URLs, the last one that answered first."""
        return self._http.urls

    def cluster_status(self):
        return self._http.send(rest.cluster_status())

    def inventory(self):
        return self._http.send(rest.inventory())

    def servers(self):
        return self._http.send(rest.servers())

    def set_maintenance(self, server_id, on):
        return self._http.send(rest.set_maintenance(server_id, on))

    def server(self, server_id):
        return self._http.send(rest.server(server_id))

    def set_draining(self, server_id, on):
        return self._http.send(rest.set_draining(server_id, on))

    def remove_server(self, server_id):
        return self._http.send(rest.remove_server(server_id))

    def repair_now(self):
        return self._http.send(rest.repair_now())

    def recount_figures(self):
        return self._http.send(rest.recount_figures())

    def volumes(self, **filters):
        """Every volume (matching ``filters``, those of
        :func:`rest.volumes`), in name order: a list, page after page."""
        return list(self.iter_volumes(**filters))

    def iter_volumes(self, limit=None, marker=None, page_size=None,
                     **filters):
        """The volumes after ``marker``, at most ``limit`` (None: all),
        asked for ``page_size`` (paging.PAGE_SIZE) at a time: each once,
        while volumes are created and deleted (paging.Pages)."""
        return self._walk(paging.volume_pages(limit, marker, page_size,
                                            **filters))

    def volumes_page(self, limit, marker=None, **filters):
        """(up to ``limit`` volumes after ``marker``, the marker of the
        next page or None): one page, however small the master's pages
        (it asks for more until it has ``limit``).  MarkerNotFound (a
        400) when ``marker`` names no volume."""
        pages = paging.volume_pages(limit, marker, **filters)
        return list(self._walk(pages)), pages.next_marker

    def _walk(self, pages):
        """The items of a paging.Pages walk, one request per page."""
        while (req := pages.request()) is not None:
            try:
                reply = self._http.send(req)
            except exception.MarkerNotFound:
                if not pages.marker_lost():
                    raise
                continue
            yield from pages.answer(reply)

    def volume(self, ref):
        return self._http.send(rest.volume(ref))

    def create_volume(self, name, size, **kwargs):
        try:
            return self._http.send(rest.create_volume(name, size, **kwargs))
        except exception.AlreadyExists as e:
            return _own_create(e, self.volume(name), size, kwargs)

    def clone(self, snapshot, name, size=None, **kwargs):
        return self._http.send(rest.clone(snapshot, name, size, **kwargs))

    def delete_volume(self, ref):
        self._http.send(rest.delete_volume(ref))

    def rename_volume(self, ref, name):
        return self._http.send(rest.update_volume(ref, name=name))

    def set_qos(self, ref, qos):
        """Replace a volume's QoS limits ({} removes them)."""
        return self._http.send(rest.update_volume(ref, qos=qos))

    def update_volume(self, ref, **fields):
        return self._http.send(rest.update_volume(ref, **fields))

    def grow(self, ref, size):
        """Grow a volume (shrinking must zero the tail first: the client
        library's ``Cluster.resize`` does)."""
        return self._http.send(rest.resize(ref, size))

    def revert(self, ref, snapshot):
        return self._http.send(rest.revert(ref, snapshot))

    def change_members(self, volume, index, action, server_id, epoch):
        return self._http.send(rest.change_members(volume, index, action,
                                                   server_id, epoch))

    def chunk_map(self, volume, start, count, allocate=False):
        return self._http.send(rest.chunk_map(volume, start, count,
                                              allocate))

    def revoke_lease(self, ref):
        return self._http.send(rest.revoke_lease(ref))

    def lease_history(self, ref, limit=None):
        """Volume ``ref``'s lease events, oldest first (the newest
        ``limit``); ``protocol.lease_history.check`` proves one writer
        at a time from them."""
        return self._http.send(rest.lease_history(ref, limit))

    def ticket(self, ref, copy_up=False):
        """A read-only ticket for volume ``ref`` (rest.ticket)."""
        return self._http.send(rest.ticket(ref, copy_up))

    def snapshots(self, volume=None, **filters):
        """Every snapshot of ``volume`` (of every volume if None),
        matching ``filters`` (those of rest.snapshots): a list, page
        after page."""
        return list(self.iter_snapshots(volume, **filters))

    def iter_snapshots(self, volume=None, limit=None, marker=None,
                       page_size=None, **filters):
        """The snapshots after ``marker`` (``volume@name``), at most
        ``limit``: see iter_volumes."""
        return self._walk(paging.snapshot_pages(volume, limit, marker,
                                              page_size, **filters))

    def snapshots_page(self, limit, marker=None, volume=None, **filters):
        """(up to ``limit`` snapshots after ``marker``, the marker of
        the next page or None): see volumes_page."""
        pages = paging.snapshot_pages(volume, limit, marker, **filters)
        return list(self._walk(pages)), pages.next_marker

    def snapshot(self, ref):
        return self._http.send(rest.snapshot(ref))

    def create_snapshot(self, volume, name):
        return self._http.send(rest.create_snapshot(volume, name))

    def rename_snapshot(self, ref, name):
        return self._http.send(rest.rename_snapshot(ref, name))

    def delete_snapshot(self, ref):
        self._http.send(rest.delete_snapshot(ref))

    def attachments(self, ref=None, host=None):
        return self._http.send(rest.attachments(ref, host))

    def attach(self, ref, host, standby=False):
        """Attach volume ``ref`` to ``host`` (``standby``: a live
        migration's destination; see rest.attach)."""
        return self._http.send(rest.attach(ref, host, standby))

    def attachment(self, ref, host):
        return self._http.send(rest.attachment(ref, host))

    def update_attachment(self, ref, host, status, path=None, error=None):
        return self._http.send(rest.update_attachment(ref, host, status,
                                                      path, error))

    def detach(self, ref, host):
        self._http.send(rest.detach(ref, host))

    def host(self, name):
        """A client host's leases and whether it is fenced."""
        return self._http.send(rest.host(name))

    def fence_host(self, name, reason=None):
        """Revoke every lease of the host and refuse it new ones."""
        return self._http.send(rest.fence_host(name, reason))

    def unfence_host(self, name):
        self._http.send(rest.unfence_host(name))

    def host_heartbeat(self, name, interval, stopping=False):
        """Beat for client host ``name`` (every ``interval`` seconds;
        ``stopping``: the last, its agent stops on purpose): {'host',
        'fenced', 'fence_reason', 'leading_for'}."""
        return self._http.send(rest.host_heartbeat(name, interval,
                                                   stopping))

    def host_heartbeats(self):
        """{'leading_for': s, 'hosts': {host: {'age', 'interval'}}}."""
        return self._http.send(rest.host_heartbeats())

    def fenced_hosts(self):
        return self._http.send(rest.fenced_hosts())

    def principals(self):
        return self._http.send(rest.principals())

    def create_principal(self, name, role, key):
        """Create principal ``name`` with ``role`` and ``key`` (bytes,
        made here: it goes to the master wrapped with the signer's
        key, see auth.wrap_key)."""
        wrapped, nonce = auth.wrap_key(self._http.principal[1], key)
        return self._http.send(rest.create_principal(name, role, wrapped,
                                                     nonce))

    def rotate_principal(self, name, key, window):
        """Give ``name`` the new ``key``; its old key stays valid
        ``window`` seconds."""
        wrapped, nonce = auth.wrap_key(self._http.principal[1], key)
        return self._http.send(rest.rotate_principal(name, wrapped, nonce,
                                                     window))

    def revoke_principal(self, name):
        self._http.send(rest.revoke_principal(name))


class AsyncMasterClient:
    """asyncio client of the master; create and use inside one loop."""

    def __init__(self, urls, key, timeout=30.0, tls=None, principal=None):
        self._http = http.AsyncHttp(urls, key, timeout, tls=tls,
                                    principal=principal)

    @property
    def urls(self):
        return self._http.urls

    async def close(self):
        await self._http.close()

    async def inventory(self):
        return await self._http.send(rest.inventory())

    async def recount_figures(self):
        return await self._http.send(rest.recount_figures())

    async def servers(self):
        return await self._http.send(rest.servers())

    async def register_server(self, **fields):
        return await self._http.send(rest.register_server(**fields))

    async def heartbeat(self, server_id, usage):
        return await self._http.send(rest.heartbeat(server_id, usage))

    async def volumes(self, **filters):
        """Every volume (matching ``filters``), page after page (see
        MasterClient.volumes)."""
        return [v async for v in self.iter_volumes(**filters)]

    def iter_volumes(self, limit=None, marker=None, page_size=None,
                     **filters):
        """An async iterator over the volumes (see
        MasterClient.iter_volumes)."""
        return self._walk(paging.volume_pages(limit, marker, page_size,
                                            **filters))

    async def volumes_page(self, limit, marker=None, **filters):
        """(volumes, next marker): see MasterClient.volumes_page."""
        pages = paging.volume_pages(limit, marker, **filters)
        return [v async for v in self._walk(pages)], pages.next_marker

    async def _walk(self, pages):
        while (req := pages.request()) is not None:
            try:
                reply = await self._http.send(req)
            except exception.MarkerNotFound:
                if not pages.marker_lost():
                    raise
                continue
            for item in pages.answer(reply):
                yield item

    async def volume(self, ref):
        return await self._http.send(rest.volume(ref))

    async def create_volume(self, name, size, **kwargs):
        try:
            return await self._http.send(rest.create_volume(name, size,
                                                            **kwargs))
        except exception.AlreadyExists as e:
            return _own_create(e, await self.volume(name), size, kwargs)

    async def clone(self, snapshot, name, size=None, **kwargs):
        return await self._http.send(rest.clone(snapshot, name, size,
                                                **kwargs))

    async def resize(self, ref, size, force=None):
        return await self._http.send(rest.resize(ref, size, force))

    async def revert(self, ref, snapshot):
        return await self._http.send(rest.revert(ref, snapshot))

    async def detach_parent(self, ref):
        return await self._http.send(rest.detach_parent(ref))

    async def chunk_map(self, volume, start, count, allocate=False):
        return await self._http.send(rest.chunk_map(volume, start, count,
                                                    allocate))

    async def drop_replica(self, volume, index, server_id, epoch):
        return await self._http.send(rest.drop_replica(volume, index,
                                                       server_id, epoch))

    async def change_members(self, volume, index, action, server_id,
                             epoch):
        return await self._http.send(rest.change_members(
            volume, index, action, server_id, epoch))

    async def acquire_lease(self, volume, holder, force=False, ttl=None,
                            handover=False):
        """The lease, its ticket under 'ticket' (_lease_with_ticket);
        ``handover``: see rest.acquire_lease."""
        return _lease_with_ticket(await self._http.send(
            rest.acquire_lease(volume, holder, force, ttl, handover)))

    async def renew_lease(self, volume, holder, generation, ttl):
        """The renewed lease, its new ticket under 'ticket'."""
        return _lease_with_ticket(await self._http.send(
            rest.renew_lease(volume, holder, generation, ttl)))

    async def ticket(self, ref, copy_up=False):
        """A read-only ticket for volume ``ref`` (rest.ticket)."""
        return await self._http.send(rest.ticket(ref, copy_up))

    async def release_lease(self, volume, holder, generation):
        await self._http.send(rest.release_lease(volume, holder, generation))

    async def snapshot(self, ref):
        return await self._http.send(rest.snapshot(ref))

    async def snapshots(self, volume=None, **filters):
        """Every snapshot of ``volume`` (or of every volume), page after
        page (see MasterClient.snapshots)."""
        return [s async for s in self._walk(paging.snapshot_pages(
            volume, **filters))]

    async def attachments(self, ref=None, host=None):
        return await self._http.send(rest.attachments(ref, host))

    async def create_snapshot(self, volume, name):
        return await self._http.send(rest.create_snapshot(volume, name))

    async def delete_snapshot(self, ref):
        await self._http.send(rest.delete_snapshot(ref))

"""Clients of the master's REST API: an asyncio one and a blocking one.

Both sign every request with the cluster key, try the master URLs in
order, and turn error bodies back into the exception the master raised.
The blocking client uses only the standard library's sockets, so it works
unchanged in a process eventlet has monkey-patched.
"""

import json
import logging
import urllib.error
import urllib.parse
import urllib.request

from cinder_ursa import exception
from cinder_ursa.common import auth

LOG = logging.getLogger(__name__)

PREFIX = '/v1'


def _urls(urls):
    if isinstance(urls, str):
        urls = [urls]
    out = [u.rstrip('/') for u in urls if u]
    if not out:
        raise exception.InvalidArgument(reason='no master URL given')
    return out


def _remote_error(status, text):
    try:
        err = json.loads(text)['error']
        return exception.from_code(err['code'], err['message'])
    except (ValueError, KeyError, TypeError):
        exc = exception.InternalError(
            reason='HTTP %d from the master: %s' % (status, text[:200]))
        return exc


def _path(path, params):
    path = PREFIX + path
    if params:
        path += '?' + urllib.parse.urlencode(params)
    return path


class AsyncMasterClient:
    """aiohttp client of the master; create and use inside one loop."""

    def __init__(self, urls, key, timeout=30.0):
        import aiohttp
        self._aiohttp = aiohttp
        self.urls = _urls(urls)
        self.key = key
        self.timeout = timeout
        self._session = None

    async def _sess(self):
        if self._session is None or self._session.closed:
            self._session = self._aiohttp.ClientSession(
                timeout=self._aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def request(self, method, path, body=None, params=None):
        sess = await self._sess()
        full = _path(path, params)
        sig_path = full.split('?', 1)[0]
        last = None
        for i, base in enumerate(self.urls):
            headers = {auth.HEADER: auth.sign(self.key, method, sig_path)}
            try:
                async with sess.request(method, base + full, json=body,
                                        headers=headers) as resp:
                    text = await resp.text()
                    if resp.status >= 400:
                        raise _remote_error(resp.status, text)
                    if i:  # the first that answers goes first next time
                        self.urls.insert(0, self.urls.pop(i))
                    return json.loads(text) if text else {}
            except (self._aiohttp.ClientConnectionError, OSError) as e:
                last = exception.UrsaConnectionError(peer=base, reason=str(e))
            except TimeoutError:
                last = exception.UrsaTimeout(peer=base, seconds=self.timeout)
        raise last

    async def close(self):
        if self._session is not None:
            await self._session.close()
            self._session = None

    # Typed helpers used by the chunk servers and the client library.
    async def chunk_map(self, volume, start, count, allocate=False):
        return await self.request('GET', '/volumes/%s/chunks' % volume,
                                  params={'start': start, 'count': count,
                                          'allocate': int(allocate)})

    async def drop_replica(self, volume, index, server_id, epoch):
        r = await self.request('POST', '/volumes/%s/chunks/%d/drop'
                               % (volume, index),
                               {'server_id': server_id, 'epoch': epoch})
        return r['chunk']

    async def servers(self):
        return (await self.request('GET', '/chunkservers'))['chunkservers']


class MasterClient:
    """Blocking client of the master (CLI, Cinder driver, nova_ha)."""

    def __init__(self, urls, key, timeout=30.0):
        self.urls = _urls(urls)
        self.key = key
        self.timeout = timeout

    def request(self, method, path, body=None, params=None):
        full = _path(path, params)
        sig_path = full.split('?', 1)[0]
        data = json.dumps(body).encode() if body is not None else None
        last = None
        for i, base in enumerate(self.urls):
            req = urllib.request.Request(base + full, data=data, method=method)
            req.add_header(auth.HEADER, auth.sign(self.key, method, sig_path))
            if data is not None:
                req.add_header('Content-Type', 'application/json')
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    text = r.read().decode()
                if i:
                    self.urls.insert(0, self.urls.pop(i))
                return json.loads(text) if text else {}
            except urllib.error.HTTPError as e:
                raise _remote_error(e.code, e.read().decode(
                    'utf-8', 'replace')) from None
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, 'reason', e)
                last = exception.UrsaConnectionError(
                    peer=base, reason='%s; is ursa-master running there?'
                    % reason)
        raise last

    def cluster_status(self):
        return self.request('GET', '/cluster')

    def servers(self):
        return self.request('GET', '/chunkservers')['chunkservers']

    def volumes(self):
        return self.request('GET', '/volumes')['volumes']

    def volume(self, ref):
        return self.request('GET', '/volumes/%s' % quote(ref))['volume']

    def create_volume(self, name, size, **kwargs):
        body = {'name': name, 'size': size}
        body.update({k: v for k, v in kwargs.items() if v is not None})
        return self.request('POST', '/volumes', body)['volume']

    def delete_volume(self, ref):
        self.request('DELETE', '/volumes/%s' % quote(ref))

    def rename_volume(self, ref, name):
        return self.request('PATCH', '/volumes/%s' % quote(ref),
                            {'name': name})['volume']

    def set_qos(self, ref, qos):
        """Replace a volume's QoS limits ({} removes them)."""
        return self.request('PATCH', '/volumes/%s' % quote(ref),
                            {'qos': qos})['volume']

    def create_snapshot(self, volume, name):
        return self.request('POST', '/volumes/%s/snapshots' % quote(volume),
                            {'name': name})['snapshot']

    def snapshots(self, volume=None):
        path = ('/volumes/%s/snapshots' % quote(volume) if volume
                else '/snapshots')
        return self.request('GET', path)['snapshots']

    def snapshot(self, ref):
        return self.request('GET', '/snapshots/%s' % quote(ref))['snapshot']

    def rename_snapshot(self, ref, name):
        return self.request('PATCH', '/snapshots/%s' % quote(ref),
                            {'name': name})['snapshot']

    def delete_snapshot(self, ref):
        self.request('DELETE', '/snapshots/%s' % quote(ref))

    def clone(self, snapshot, name, size=None, **kwargs):
        body = {'name': name, 'snapshot': snapshot, **kwargs}
        if size is not None:
            body['size'] = size
        return self.request('POST', '/volumes', body)['volume']

    def grow(self, ref, size):
        """Grow a volume (shrinking must zero the tail first: the client
        library's ``Cluster.resize`` does)."""
        return self.request('PUT', '/volumes/%s/size' % quote(ref),
                            {'size': size})['volume']

    def revert(self, ref, snapshot):
        return self.request('POST', '/volumes/%s/revert' % quote(ref),
                            {'snapshot': snapshot})['volume']

    def attach(self, ref, host):
        return self.request('POST', '/volumes/%s/attachments' % quote(ref),
                            {'host': host})['attachment']

    def attachment(self, ref, host):
        return self.request('GET', '/volumes/%s/attachments/%s' % (
            quote(ref), quote(host)))['attachment']

    def attachments(self, ref=None, host=None):
        path = ('/volumes/%s/attachments' % quote(ref) if ref
                else '/attachments')
        return self.request('GET', path, params={'host': host} if host
                            else None)['attachments']

    def update_attachment(self, ref, host, status, path=None, error=None):
        return self.request('PUT', '/volumes/%s/attachments/%s' % (
            quote(ref), quote(host)), {'status': status, 'path': path,
                                       'error': error})['attachment']

    def detach(self, ref, host):
        self.request('DELETE', '/volumes/%s/attachments/%s' % (
            quote(ref), quote(host)))

    def revoke_lease(self, ref):
        return self.request('POST', '/volumes/%s/lease/revoke'
                            % quote(ref))['lease']

    def host(self, host):
        """A client host's leases and whether it is fenced."""
        return self.request('GET', '/hosts/%s' % quote(host))['host']

    def fence_host(self, host, reason=None):
        """Revoke every lease of ``host`` and refuse it new ones."""
        return self.request('POST', '/hosts/%s/fence' % quote(host),
                            {'reason': reason})['fence']

    def unfence_host(self, host):
        self.request('DELETE', '/hosts/%s/fence' % quote(host))

    def fenced_hosts(self):
        return self.request('GET', '/fenced-hosts')['fenced_hosts']


def quote(ref):
    """A volume name or id (or ``volume@snapshot``) as one URL path
    segment.  '@' stays as it is: HTTP clients normalise %40 back to '@',
    and the signature covers the path as sent."""
    return urllib.parse.quote(str(ref), safe='@')

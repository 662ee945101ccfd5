"""A fake of the compute API calls nova_ha makes, following Nova's
documented REST semantics (api-ref, microversions up to 2.95):

- ``GET /os-services``: a compute's ``state`` is ``down`` when it stopped
  reporting (the fake's "down" control) or is forced down; ``PUT
  /os-services/{uuid}`` (2.53+) sets ``forced_down``, ``status`` and
  ``disabled_reason``; un-forcing is refused while evacuations from that
  host are ``done`` and not yet cleaned up by its restarted nova-compute.
- ``GET /servers/detail?all_tenants=1&host=H`` and ``GET /servers/{id}``
  with the admin extended attributes, metadata and the embedded flavor's
  extra specs (2.47+), paged by ``limit``/``marker``.
- ``POST /servers/{id}/action {"evacuate": {...}}``: 404 for an unknown
  server, 409 unless vm_state is active, stopped or error with no task, 400
  while the source compute service is up, 404 for an unknown target host;
  otherwise 200 with no body (2.14+), a migration record ``accepted`` ->
  ``pre-migrating`` -> ``done`` (or ``error`` when no host has room: the
  instance goes to ERROR on the dead host), the instance ``rebuilding``
  meanwhile and rebuilt on the destination ACTIVE (STOPPED stays STOPPED);
  from 2.95 every evacuated instance is rebuilt STOPPED.
- ``GET /os-migrations?migration_type=evacuation&source_compute=H``,
  newest first, paged by ``limit``/``marker`` (2.59+).

Test controls live under ``/_fake`` (add hosts and servers, kill and
restart a compute, read the log of evacuate calls).  Run it as a process::

    python -m tests.nova_ha.fakenova --port 8774 --step 0.2
"""

import argparse
import asyncio
import datetime
import itertools
import threading
import uuid as uuid_mod

from aiohttp import web

PREFIX = '/v2.1'
VERSION = web.RequestKey('version', tuple)
MAX_VERSION = (2, 100)


def _now():
    return datetime.datetime.now(datetime.UTC).strftime(
        '%Y-%m-%dT%H:%M:%S.%f')


def _fault(status, message):
    name = {400: 'badRequest', 404: 'itemNotFound', 409: 'conflictingRequest'
            }[status]
    return web.json_response({name: {'code': status, 'message': message}},
                             status=status)


class FakeNova:
    def __init__(self, step=0.2):
        self.step = step
        self.lock = threading.Lock()
        self.services = {}      # host -> service dict
        self.dead = set()       # hosts whose nova-compute stopped reporting
        self.capacity = {}      # host -> max instances
        self.servers = {}       # uuid -> server dict
        self.migrations = []
        self.calls = []         # evacuate requests accepted, in order
        self._mid = itertools.count(1)
        self._tasks = set()

    # --- controls ------------------------------------------------------------

    def add_host(self, host, capacity=100):
        with self.lock:
            self.services[host] = {
                'id': str(uuid_mod.uuid4()), 'binary': 'nova-compute',
                'host': host, 'zone': 'nova', 'status': 'enabled',
                'state': 'up', 'forced_down': False, 'updated_at': _now(),
                'disabled_reason': None}
            self.capacity[host] = capacity

    def add_server(self, name, host, vm_state='active', metadata=None,
                   extra_specs=None, task_state=None):
        sid = str(uuid_mod.uuid4())
        with self.lock:
            self.servers[sid] = {
                'id': sid, 'name': name, 'metadata': dict(metadata or {}),
                'flavor': {'original_name': 'm1.small', 'vcpus': 1,
                           'ram': 512, 'disk': 1,
                           'extra_specs': dict(extra_specs or {})},
                'OS-EXT-SRV-ATTR:host': host,
                'OS-EXT-STS:vm_state': vm_state,
                'OS-EXT-STS:task_state': task_state,
                'created': _now()}
        return sid

    def compute_down(self, host):
        """nova-compute on ``host`` stopped reporting."""
        with self.lock:
            self.dead.add(host)

    def compute_up(self, host):
        """nova-compute on ``host`` (re)started: it destroys the local
        copies of instances evacuated away and completes their records."""
        with self.lock:
            self.dead.discard(host)
            for m in self.migrations:
                if m['source_compute'] == host and m['status'] == 'done':
                    m['status'] = 'completed'
                    m['updated_at'] = _now()

    def evacuate_calls(self, uuid=None):
        with self.lock:
            return [c for c in self.calls if uuid is None
                    or c['uuid'] == uuid]

    def _state(self, host):
        s = self.services[host]
        return 'down' if host in self.dead or s['forced_down'] else 'up'

    def _service_view(self, host):
        s = dict(self.services[host])
        s['state'] = self._state(host)
        return s

    def _server_view(self, srv):
        s = dict(srv)
        vm, task = s['OS-EXT-STS:vm_state'], s['OS-EXT-STS:task_state']
        s['status'] = ('REBUILD' if task and task.startswith('rebuild') else
                       {'active': 'ACTIVE', 'stopped': 'SHUTOFF',
                        'error': 'ERROR'}.get(vm, vm.upper()))
        s['OS-EXT-SRV-ATTR:hypervisor_hostname'] = s['OS-EXT-SRV-ATTR:host']
        return s

    # --- the API -----------------------------------------------------------

    def app(self):
        app = web.Application(middlewares=[self._version])
        r = app.router
        r.add_get(PREFIX + '/os-services', self.list_services)
        r.add_put(PREFIX + '/os-services/{id}', self.update_service)
        r.add_get(PREFIX + '/servers/detail', self.list_servers)
        r.add_get(PREFIX + '/servers/{id}', self.show_server)
        r.add_post(PREFIX + '/servers/{id}/action', self.action)
        r.add_get(PREFIX + '/os-migrations', self.list_migrations)
        r.add_post('/_fake/hosts', self._ctl_host)
        r.add_post('/_fake/hosts/{host}/{what}', self._ctl_host_state)
        r.add_post('/_fake/servers', self._ctl_server)
        r.add_get('/_fake/calls', self._ctl_calls)
        r.add_get('/_fake/servers', self._ctl_servers)
        return app

    @web.middleware
    async def _version(self, request, handler):
        if request.path.startswith(PREFIX):
            hdr = request.headers.get('OpenStack-API-Version', 'compute 2.1')
            try:
                service, ver = hdr.split()
                major, minor = (int(x) for x in ver.split('.'))
            except ValueError:
                return _fault(400, 'Invalid API version header %r' % hdr)
            if service != 'compute' or (major, minor) > MAX_VERSION:
                return web.json_response({}, status=406)
            request[VERSION] = (major, minor)
        return await handler(request)

    async def list_services(self, request):
        with self.lock:
            out = [self._service_view(h) for h in sorted(self.services)
                   if request.query.get('host') in (None, h)]
        binary = request.query.get('binary')
        return web.json_response({'services': [
            s for s in out if binary in (None, s['binary'])]})

    async def update_service(self, request):
        if request[VERSION] < (2, 53):
            return _fault(404, 'Service %s could not be found.'
                          % request.match_info['id'])
        body = await request.json()
        with self.lock:
            svc = next((s for s in self.services.values()
                        if s['id'] == request.match_info['id']), None)
            if svc is None:
                return _fault(404, 'Service %s could not be found.'
                              % request.match_info['id'])
            if body.get('forced_down') is False and any(
                    m['source_compute'] == svc['host']
                    and m['status'] == 'done' for m in self.migrations):
                return _fault(400, 'Unable to unforce down compute service '
                              '%s while evacuated instances are not yet '
                              'cleaned up' % svc['host'])
            if 'forced_down' in body:
                svc['forced_down'] = bool(body['forced_down'])
            if 'status' in body:
                if body['status'] not in ('enabled', 'disabled'):
                    return _fault(400, 'Invalid status %r' % body['status'])
                svc['status'] = body['status']
                svc['disabled_reason'] = (body.get('disabled_reason')
                                          if body['status'] == 'disabled'
                                          else None)
            svc['updated_at'] = _now()
            return web.json_response(
                {'service': self._service_view(svc['host'])})

    async def list_servers(self, request):
        q = request.query
        if 'host' in q and q.get('all_tenants') not in ('1', 'True', 'true'):
            return _fault(400, 'host filtering needs all_tenants')
        with self.lock:
            out = [self._server_view(s) for s in self.servers.values()
                   if q.get('host') in (None, s['OS-EXT-SRV-ATTR:host'])]
        out.sort(key=lambda s: (s['created'], s['id']), reverse=True)
        if 'marker' in q:
            ids = [s['id'] for s in out]
            if q['marker'] not in ids:
                return _fault(400, 'marker [%s] not found' % q['marker'])
            out = out[ids.index(q['marker']) + 1:]
        if 'limit' in q:
            out = out[:int(q['limit'])]
        return web.json_response({'servers': out})

    async def show_server(self, request):
        with self.lock:
            srv = self.servers.get(request.match_info['id'])
            if srv is None:
                return _fault(404, 'Instance %s could not be found.'
                              % request.match_info['id'])
            return web.json_response({'server': self._server_view(srv)})

    async def action(self, request):
        body = await request.json()
        if list(body) != ['evacuate']:
            return _fault(400, 'only evacuate is faked')
        args = body['evacuate'] or {}
        if request[VERSION] >= (2, 68) and 'force' in args:
            return _fault(400, "Additional properties are not allowed "
                          "('force' was unexpected)")
        sid = request.match_info['id']
        with self.lock:
            srv = self.servers.get(sid)
            if srv is None:
                return _fault(404, 'Instance %s could not be found.' % sid)
            vm, task = (srv['OS-EXT-STS:vm_state'],
                        srv['OS-EXT-STS:task_state'])
            if vm not in ('active', 'stopped', 'error') or task:
                return _fault(409, "Cannot 'evacuate' instance %s while it "
                              "is in vm_state %s, task_state %s"
                              % (sid, vm, task))
            source = srv['OS-EXT-SRV-ATTR:host']
            if self._state(source) == 'up':
                return _fault(400, 'Compute service of %s is still in use.'
                              % source)
            target = args.get('host')
            if target is not None:
                if target not in self.services:
                    return _fault(404, 'Compute host %s could not be found.'
                                  % target)
                if target == source:
                    return _fault(400, 'The target host can\'t be the same '
                                  'one.')
            mig = {'id': next(self._mid), 'uuid': str(uuid_mod.uuid4()),
                   'instance_uuid': sid, 'source_compute': source,
                   'source_node': source, 'dest_compute': None,
                   'dest_node': None, 'dest_host': None,
                   'status': 'accepted', 'migration_type': 'evacuation',
                   'created_at': _now(), 'updated_at': _now()}
            self.migrations.append(mig)
            srv['OS-EXT-STS:task_state'] = 'rebuilding'
            self.calls.append({'uuid': sid, 'name': srv['name'],
                               'source': source, 'target': target,
                               'migration': mig['id']})
        stopped = vm == 'stopped' or request[VERSION] >= (2, 95)
        task = asyncio.get_running_loop().create_task(
            self._rebuild(srv, mig, target, stopped))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.Response(status=200)

    def _pick(self, source, target):
        load = {}
        for s in self.servers.values():
            h = s['OS-EXT-SRV-ATTR:host']
            load[h] = load.get(h, 0) + 1
        hosts = [target] if target else sorted(self.services)
        for h in hosts:
            svc = self.services[h]
            if (h != source and self._state(h) == 'up'
                    and svc['status'] == 'enabled'
                    and load.get(h, 0) < self.capacity[h]):
                return h
        return None

    async def _rebuild(self, srv, mig, target, stopped):
        await asyncio.sleep(self.step)
        with self.lock:
            dest = self._pick(mig['source_compute'], target)
            mig['updated_at'] = _now()
            if dest is None:
                # No valid host: the instance stays, in ERROR.
                mig['status'] = 'error'
                srv['OS-EXT-STS:vm_state'] = 'error'
                srv['OS-EXT-STS:task_state'] = None
                return
            mig['status'] = 'pre-migrating'
            mig['dest_compute'] = mig['dest_node'] = dest
            srv['OS-EXT-STS:task_state'] = 'rebuild_spawning'
        await asyncio.sleep(self.step)
        with self.lock:
            srv['OS-EXT-SRV-ATTR:host'] = dest
            srv['OS-EXT-STS:task_state'] = None
            srv['OS-EXT-STS:vm_state'] = 'stopped' if stopped else 'active'
            mig['status'] = 'done'
            mig['updated_at'] = _now()

    async def list_migrations(self, request):
        q = request.query
        with self.lock:
            out = [dict(m) for m in self.migrations
                   if q.get('migration_type') in (None, m['migration_type'])
                   and q.get('source_compute') in (None, m['source_compute'])
                   and q.get('instance_uuid') in (None, m['instance_uuid'])]
        out.sort(key=lambda m: (m['created_at'], m['id']), reverse=True)
        if 'marker' in q:
            ids = [m['uuid'] for m in out]
            if q['marker'] not in ids:
                return _fault(404, 'Migration %s could not be found.'
                              % q['marker'])
            out = out[ids.index(q['marker']) + 1:]
        if 'limit' in q:
            out = out[:int(q['limit'])]
        return web.json_response({'migrations': out})

    # --- controls over HTTP (for a fake in its own process) --------------

    async def _ctl_host(self, request):
        b = await request.json()
        self.add_host(b['host'], b.get('capacity', 100))
        return web.json_response(self._service_view(b['host']))

    async def _ctl_host_state(self, request):
        host, what = request.match_info['host'], request.match_info['what']
        {'down': self.compute_down, 'up': self.compute_up}[what](host)
        return web.Response(status=204)

    async def _ctl_server(self, request):
        b = await request.json()
        return web.json_response({'id': self.add_server(**b)})

    async def _ctl_calls(self, request):
        return web.json_response({'calls': self.evacuate_calls()})

    async def _ctl_servers(self, request):
        with self.lock:
            return web.json_response({'servers': [
                self._server_view(s) for s in self.servers.values()]})


class FakeNovaThread:
    """The fake served on 127.0.0.1 from a thread of the test process."""

    def __init__(self, step=0.2):
        self.nova = FakeNova(step)
        self.loop = asyncio.new_event_loop()
        self.runner = None
        self.port = None
        self.thread = threading.Thread(target=self.loop.run_forever,
                                       daemon=True)

    @property
    def url(self):
        return 'http://127.0.0.1:%d%s' % (self.port, PREFIX)

    def start(self):
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self):
        self.runner = web.AppRunner(self.nova.app())
        await self.runner.setup()
        site = web.TCPSite(self.runner, '127.0.0.1', 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def stop(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(),
                                         self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--port', type=int, default=8774)
    p.add_argument('--step', type=float, default=0.2,
                   help='Seconds per evacuation step.')
    args = p.parse_args()
    web.run_app(FakeNova(args.step).app(), host='127.0.0.1', port=args.port,
                print=None)


if __name__ == '__main__':
    main()

"""The few compute API calls an evacuator needs, through a keystoneauth1
session, at one pinned microversion (opts.NOVA_MICROVERSION)."""

import logging

from keystoneauth1 import exceptions as ks_exc
from keystoneauth1 import loading as ks_loading

from nova_ha import opts

LOG = logging.getLogger(__name__)

# Instance states Nova can evacuate (with no task in progress).
EVACUABLE = ('active', 'stopped', 'error')


class NovaError(Exception):
    """A compute API call failed; ``status`` is the HTTP status (None when
    Nova could not be reached)."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class NovaClient:
    def __init__(self, adapter):
        self.adapter = adapter

    @classmethod
    def from_conf(cls, conf):
        group = opts.nova_group.name
        auth = ks_loading.load_auth_from_conf_options(conf, group)
        session = ks_loading.load_session_from_conf_options(conf, group,
                                                            auth=auth)
        adapter = ks_loading.load_adapter_from_conf_options(
            conf, group, session=session, auth=auth)
        return cls(adapter)

    def _call(self, method, path, body=None):
        headers = {'OpenStack-API-Version':
                   'compute %s' % opts.NOVA_MICROVERSION,
                   'X-OpenStack-Nova-API-Version': opts.NOVA_MICROVERSION,
                   'Accept': 'application/json'}
        try:
            resp = self.adapter.request(path, method, json=body,
                                        headers=headers,
                                        raise_exc=False)
        except ks_exc.ClientException as e:
            raise NovaError('%s %s: Nova API unreachable: %s'
                            % (method, path, e)) from None
        if resp.status_code >= 400:
            try:
                err = resp.json()
                detail = next(iter(err.values())).get('message', resp.text)
            except (ValueError, AttributeError, StopIteration):
                detail = resp.text
            raise NovaError('%s %s: HTTP %d: %s' % (
                method, path, resp.status_code, detail), resp.status_code)
        if not resp.content:
            return {}
        return resp.json()

    # --- services ----------------------------------------------------------

    def compute_services(self):
        return self._call('GET', '/os-services?binary=nova-compute')[
            'services']

    def force_down(self, service_id, reason):
        """Mark a compute service forced down and disabled in one call:
        Nova then lets its instances be evacuated at once, and schedules
        nothing there."""
        return self._call('PUT', '/os-services/%s' % service_id,
                          {'forced_down': True, 'status': 'disabled',
                           'disabled_reason': reason[:255]})['service']

    def enable(self, service_id):
        """Undo force_down (Nova refuses while evacuations from the host
        are 'done' but not yet cleaned up by its nova-compute)."""
        self._call('PUT', '/os-services/%s' % service_id,
                   {'forced_down': False})
        return self._call('PUT', '/os-services/%s' % service_id,
                          {'status': 'enabled'})['service']

    # --- servers -----------------------------------------------------------

    def servers_on_host(self, host):
        servers, marker = [], None
        while True:
            path = '/servers/detail?all_tenants=1&host=%s&limit=200' % host
            if marker:
                path += '&marker=%s' % marker
            page = self._call('GET', path)['servers']
            servers += page
            if len(page) < 200:
                return servers
            marker = page[-1]['id']

    def server(self, uuid):
        try:
            return self._call('GET', '/servers/%s' % uuid)['server']
        except NovaError as e:
            if e.status == 404:
                return None
            raise

    def evacuate(self, uuid, host=None):
        body = {'evacuate': {'host': host} if host else {}}
        self._call('POST', '/servers/%s/action' % uuid, body)

    def evacuations(self, source_host):
        """Evacuation migration records from ``source_host``, oldest
        first."""
        out, marker = [], None
        while True:
            path = ('/os-migrations?migration_type=evacuation'
                    '&source_compute=%s&limit=1000' % source_host)
            if marker:
                path += '&marker=%s' % marker
            page = self._call('GET', path)['migrations']
            out += page
            if len(page) < 1000:
                break
            marker = page[-1]['uuid']
        return sorted(out, key=lambda m: m['id'])


def server_host(server):
    return server.get('OS-EXT-SRV-ATTR:host')


def server_props(server):
    """Instance metadata over flavor extra specs (2.47+ embeds the
    flavor)."""
    props = dict((server.get('flavor') or {}).get('extra_specs') or {})
    props.update(server.get('metadata') or {})
    return props


def selected(props, policy, ha_key):
    """Whether ``policy`` (all, ha_enabled) selects an instance of these
    properties (:func:`server_props`) for evacuation."""
    return policy == 'all' or str(props.get(ha_key, '')).strip().lower() \
        in ('1', 'true', 'yes', 'on')

"""An in-memory stand-in for the Neutron v2.0 REST API, served from a
thread: enough of it for Nova 34 to boot servers on a network, attach
and detach volumes, live-migrate, evacuate and delete them, and for
Tempest to give each project of its dynamic credentials a network, a
subnet and a router, boot servers on them, and clean all of it up.

    stub = NeutronStub().start()
    stub.url        # http://127.0.0.1:PORT, the catalog's 'network'
    stub.log        # ['GET /v2.0/ports?device_id=...', ...]
    stub.resources('ports')
    stub.stop()

What it does:

* Networks, subnets, ports, routers (with ``add_router_interface`` and
  ``remove_router_interface``), security groups and their rules: list
  (filters on any attribute, a repeated parameter is an OR, ``fields=``
  honoured), show, create (one, or several in one request), update and
  delete, in Neutron's JSON shapes and with its errors (404
  ``NeutronError`` ``NetworkNotFound``, ``PortNotFound``...; 409
  ``NetworkInUse``, ``SubnetInUse``, ``RouterInUse``,
  ``SecurityGroupInUse``, ``IpAddressAlreadyAllocated``,
  ``IpAddressGenerationFailure``; 400 for a subnet that overlaps another
  of its network, which Tempest's dynamic credentials skip past).
* Fixed IPs: a port gets the first free address of its network's first
  IPv4 subnet (and of its first IPv6 one, if any) unless it asks for
  addresses or subnets; a subnet's gateway is its first address and its
  allocation pool the rest, unless given.
* Port binding, as ML2 with Open vSwitch reports it once bound, but at
  once and with ``binding:vif_details`` ``{}``: ``binding:vif_type``
  ``ovs`` and status ACTIVE as soon as ``binding:host_id`` names a host,
  ``unbound`` and DOWN when it is cleared; ``binding:vnic_type``
  ``normal``, ``binding:profile`` as set.  Ports owned by ``network:*``
  (router interfaces) are ACTIVE and get no security group.
* A project's ``default`` security group (with its two egress and two
  ingress rules) is made when a port of that project needs it, or when
  security groups are listed with that project as ``project_id`` or
  ``tenant_id`` filter or ``X-Project-Id`` header, as Neutron does; it
  can be deleted (Tempest does, for each project it made) and is made
  again when needed.
* Quotas: Neutron's defaults, ``GET /v2.0/quotas/{project}`` (Nova
  checks the port quota before a boot), ``.../details`` (with the
  project's usage), ``.../default``; PUT and DELETE store and reset.
  They are reported, not enforced.
* Floating IPs: none; the list is empty, an id is 404, a create 400.
* The version documents at ``/`` and ``/v2.0``, ``/v2.0/extensions``.

Authentication is not checked.  A created resource belongs to the
``project_id`` (or ``tenant_id``) of its body, else to the request's
``X-Project-Id`` header, else to ``admin``; but a router interface port
belongs to its subnet's project, and a security group rule whose body
names no project to its group's.  Nova and Tempest send the project in
the bodies of what they create.

Extensions advertised, and why.  Nova 34 looks only at a few aliases
(``nova/network/neutron.py``): ``binding-extended``, ``dns-integration``,
``multi-provider``, ``port-resource-request-groups``,
``security-groups-shared-filtering``, ``fip-port-details``,
``ip-substring-filtering``, ``segment`` and ``vnic-index``; none of them
is advertised, so Nova takes its simplest path:

* no ``binding-extended``: Nova creates no port bindings of its own
  (``/ports/{id}/bindings``, not implemented here).  A live migration
  marks the ports ``binding:profile`` ``migrating_to`` the destination
  (``setup_networks_on_host``), and ``migrate_instance_finish`` moves
  ``binding:host_id`` to it; an evacuation's rebuild moves
  ``binding:host_id`` (``setup_instance_network_on_host``).  The source
  compute then does not wait for ``network-vif-plugged`` before a live
  migration's transfer (it waits only with multiple port bindings).
* no ``dns-integration``: Nova sends no ``dns_name``;
* no ``multi-provider``: Nova reads a network's physnet from its
  ``provider:*`` attributes, which this stand-in does not give (no
  physnet, not tunneled, as far as Nova's scheduler hints go);
* no ``port-resource-request-groups``: ports have no resource request.

What is advertised describes what is implemented: ``binding``,
``security-group``, ``quotas``, ``quota_details``, ``router``,
``external-net``, ``net-mtu``, ``port-security``, ``project-id``,
``standard-attr-description``, ``standard-attr-timestamp``.  Not
``standard-attr-tag`` (no tag API), nor ``filter-validation``: filters
on attributes a resource does not have are ignored, as Neutron does
with its filter validation off.

Nova's configuration: ``[neutron]`` with ``endpoint_override`` = ``url``
(and its usual auth section) is all.  This stand-in sends Nova no
external events (``network-vif-plugged``, ``network-changed``).  Nova's
fake virt drivers do not wait for them on spawn, and without port
bindings Nova does not wait for them on live migration, so
``vif_plugging_timeout`` and ``vif_plugging_is_fatal`` may stay at their
defaults.  (libvirt waits only for VIFs not yet active, and ports here
are active once bound; a driver that waits for every VIF would need
``vif_plugging_timeout = 0``.)

What it does not do: no DHCP ports (Nova's network info has no
``dhcp_server``), no router gateway ports (``external_gateway_info`` is
kept as given), no floating IPs, subnet pools
(a subnet needs a ``cidr``), port bindings API, auto-allocated topology
(a server asking for ``networks: auto`` fails unless its project has a
network), tags, pagination
(``limit`` and ``marker`` are ignored: everything is one page),
sorting, RBAC or policy.
"""

import copy
import ipaddress
import json
import random
import re
import threading
import time
import uuid
from http import server
from urllib import parse

# The extensions advertised (see the docstring): alias, name, and what
# this stand-in does of it (its own words; 'updated' is a placeholder).
EXTENSIONS = (
    ('binding', 'Port Binding',
     'binding:host_id, binding:vif_type, binding:vnic_type, '
     'binding:profile and binding:vif_details of ports'),
    ('security-group', 'security-group',
     'Security groups and their rules; a default group per project'),
    ('quotas', 'Quota management support',
     'Quotas per project (reported, not enforced)'),
    ('quota_details', 'Quota details management support',
     'Quota usage per project'),
    ('router', 'Neutron L3 Router',
     'Routers and their interfaces; no floating IPs'),
    ('external-net', 'Neutron external network',
     'router:external of networks'),
    ('net-mtu', 'Network MTU', 'mtu of networks'),
    ('port-security', 'Port Security',
     'port_security_enabled of networks and ports'),
    ('project-id', 'project_id field enabled',
     'project_id beside tenant_id in every resource'),
    ('standard-attr-description', 'standard-attr-description',
     'description of every resource'),
    ('standard-attr-timestamp', 'Resource timestamps',
     'created_at and updated_at of every resource'),
)

# Neutron's default quotas (its [QUOTAS] quota_* options).
QUOTA_DEFAULTS = {
    'network': 100, 'subnet': 100, 'port': 500, 'router': 10,
    'floatingip': 50, 'security_group': 10, 'security_group_rule': 100,
}
# Which collection each quota counts.
QUOTA_COLLECTIONS = {
    'network': 'networks', 'subnet': 'subnets', 'port': 'ports',
    'router': 'routers', 'floatingip': 'floatingips',
    'security_group': 'security_groups',
    'security_group_rule': 'security_group_rules',
}

ROUTER_INTERFACE = 'network:router_interface'
# Owners of ports Neutron deletes itself with their network or subnet.
AUTO_DELETED_OWNERS = ('network:dhcp',)

# URL segment: (JSON collection, JSON member, NotFound type, message).
COLLECTIONS = {
    'networks': ('networks', 'network', 'NetworkNotFound',
                 'Network %s could not be found.'),
    'subnets': ('subnets', 'subnet', 'SubnetNotFound',
                'Subnet %s could not be found.'),
    'ports': ('ports', 'port', 'PortNotFound',
              'Port %s could not be found.'),
    'routers': ('routers', 'router', 'RouterNotFound',
                'Router %s could not be found'),
    'security-groups': ('security_groups', 'security_group',
                        'SecurityGroupNotFound',
                        'Security group %s does not exist'),
    'security-group-rules': ('security_group_rules', 'security_group_rule',
                             'SecurityGroupRuleNotFound',
                             'Security group rule %s does not exist'),
    'floatingips': ('floatingips', 'floatingip', 'FloatingIPNotFound',
                    'Floating IP %s could not be found'),
}
BY_COLLECTION = {v[0]: (k,) + v for k, v in COLLECTIONS.items()}

# Attributes a client may not set, on create and update.
READ_ONLY = {'id', 'status', 'created_at', 'updated_at'}
READ_ONLY_AT = {
    'networks': {'subnets'},
    'ports': {'binding:vif_type', 'binding:vif_details'},
    'security_groups': {'security_group_rules'},
}
# ...and those it sets only on create.
CREATE_ONLY = {'tenant_id', 'project_id'}
CREATE_ONLY_AT = {
    'subnets': {'network_id', 'cidr', 'ip_version', 'subnetpool_id'},
    'ports': {'network_id'},
    'security_group_rules': {
        'security_group_id', 'direction', 'ethertype', 'protocol',
        'port_range_min', 'port_range_max', 'remote_ip_prefix',
        'remote_group_id'},
}

# Query parameters that are not filters.
NOT_FILTERS = {'fields', 'limit', 'marker', 'sort_key', 'sort_dir',
               'page_reverse'}


class NeutronError(Exception):
    def __init__(self, status, kind, message):
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message

    def body(self):
        return {'NeutronError': {'type': self.kind, 'message': self.message,
                                 'detail': ''}}


def _bad(message, kind='BadRequest'):
    return NeutronError(400, kind, message)


def _now():
    return time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())


def _matches(value, wanted):
    """Whether an attribute's value matches a query-string value."""
    if isinstance(value, bool):
        return wanted.lower() in (('true', '1') if value else ('false', '0'))
    if isinstance(value, (int, float)):
        return str(value) == wanted
    if isinstance(value, list):
        return wanted in [str(v) for v in value]
    if value is None or isinstance(value, dict):
        return False
    return value == wanted


def _ip(text, kind='InvalidInput'):
    try:
        return ipaddress.ip_address(text)
    except (TypeError, ValueError):
        raise _bad("Invalid input for operation: '%s' is not a valid IP "
                   "address." % (text,), kind)


class Neutron:
    """The resources and the API's operations on them, thread-safe; no
    HTTP (``NeutronStub`` serves it)."""

    def __init__(self):
        self.lock = threading.RLock()
        self.store = {c[0]: {} for c in COLLECTIONS.values()}
        self.quotas = {}

    # -- helpers ---------------------------------------------------------

    def _get(self, collection, rid):
        item = self.store[collection].get(rid)
        if item is None:
            _, _, _, kind, message = BY_COLLECTION[collection]
            raise NeutronError(404, kind, message % rid)
        return item

    @staticmethod
    def _new(project, **attrs):
        now = _now()
        item = {'id': str(uuid.uuid4()), 'tenant_id': project,
                'project_id': project, 'description': '',
                'created_at': now, 'updated_at': now}
        item.update(attrs)
        return item

    def _view(self, collection, item, fields=None):
        item = copy.deepcopy(item)
        if collection == 'security_groups':
            item['security_group_rules'] = [
                copy.deepcopy(r)
                for r in self.store['security_group_rules'].values()
                if r['security_group_id'] == item['id']]
        if fields:
            item = {k: v for k, v in item.items() if k in fields}
        return item

    @staticmethod
    def _check_writable(collection, body, creating):
        read_only = READ_ONLY | READ_ONLY_AT.get(collection, set())
        if not creating:
            read_only = (read_only | CREATE_ONLY
                         | CREATE_ONLY_AT.get(collection, set()))
        for key in body:
            if key in read_only:
                if creating:
                    raise _bad("Attribute '%s' not allowed in POST" % key)
                raise _bad('Cannot update read-only attribute %s' % key)

    def _ports_on(self, network_id=None, subnet_id=None):
        for port in self.store['ports'].values():
            if network_id and port['network_id'] == network_id:
                yield port
            elif subnet_id and any(f['subnet_id'] == subnet_id
                                   for f in port['fixed_ips']):
                yield port

    # -- the API ---------------------------------------------------------

    def list(self, collection, query, project_hint=None):
        with self.lock:
            if collection == 'security_groups':
                wanted = (query.get('project_id') or query.get('tenant_id')
                          or [project_hint])
                if wanted[0]:
                    self._default_security_group(wanted[0])
            filters = {k: v for k, v in query.items()
                       if k not in NOT_FILTERS}
            found = []
            for item in self.store[collection].values():
                view = self._view(collection, item)
                if all(self._filter(view, k, v) for k, v in filters.items()):
                    found.append(self._view(collection, item,
                                            query.get('fields')))
            return found

    @staticmethod
    def _filter(item, key, wanted):
        if key == 'fixed_ips' and 'fixed_ips' in item:
            # fixed_ips=ip_address=10.0.0.3, fixed_ips=subnet_id=...
            for want in wanted:
                name, _, value = want.partition('=')
                if any(f.get(name) == value for f in item['fixed_ips']):
                    return True
            return False
        if key not in item:
            return True
        return any(_matches(item[key], w) for w in wanted)

    def show(self, collection, rid, fields=None):
        with self.lock:
            return self._view(collection, self._get(collection, rid),
                              fields)

    def create(self, collection, body, project_hint=None):
        """One resource, or several (a list): all or none."""
        with self.lock:
            if isinstance(body, list):
                made = []
                try:
                    for one in body:
                        made.append(self.create(collection, one,
                                                project_hint))
                except NeutronError:
                    for item in reversed(made):
                        self._delete(collection, item['id'])
                    raise
                return made
            if not isinstance(body, dict):
                raise _bad('Resource body required')
            self._check_writable(collection, body, creating=True)
            project = (body.get('project_id') or body.get('tenant_id')
                       or project_hint or 'admin')
            make = getattr(self, '_create_' + collection)
            item = make(body, project)
            self.store[collection][item['id']] = item
            return self._view(collection, item)

    def update(self, collection, rid, body):
        with self.lock:
            item = self._get(collection, rid)
            if not isinstance(body, dict):
                raise _bad('Resource body required')
            self._check_writable(collection, body, creating=False)
            update = getattr(self, '_update_' + collection, None)
            if update is not None:
                update(item, body)
            else:
                item.update(body)
            item['updated_at'] = _now()
            return self._view(collection, item)

    def delete(self, collection, rid):
        with self.lock:
            self._get(collection, rid)
            check = getattr(self, '_check_delete_' + collection, None)
            if check is not None:
                check(rid)
            self._delete(collection, rid)

    def _delete(self, collection, rid):
        item = self.store[collection].pop(rid)
        if collection == 'networks':
            for sid in item['subnets']:
                self.store['subnets'].pop(sid, None)
            for port in list(self._ports_on(network_id=rid)):
                del self.store['ports'][port['id']]
        elif collection == 'subnets':
            network = self.store['networks'].get(item['network_id'])
            if network is not None and rid in network['subnets']:
                network['subnets'].remove(rid)
            for port in list(self._ports_on(subnet_id=rid)):
                del self.store['ports'][port['id']]
        elif collection == 'security_groups':
            for rule in list(self.store['security_group_rules'].values()):
                if rid in (rule['security_group_id'],
                           rule['remote_group_id']):
                    del self.store['security_group_rules'][rule['id']]

    # -- networks --------------------------------------------------------

    def _create_networks(self, body, project):
        network = self._new(
            project, name='', admin_state_up=True, status='ACTIVE',
            subnets=[], shared=False, mtu=1450, port_security_enabled=True)
        network['router:external'] = False
        network.update({k: v for k, v in body.items()
                        if k not in CREATE_ONLY})
        return network

    def _check_delete_networks(self, rid):
        for port in self._ports_on(network_id=rid):
            if port['device_owner'] not in AUTO_DELETED_OWNERS:
                raise NeutronError(
                    409, 'NetworkInUse',
                    'Unable to complete operation on network %s. There are '
                    'one or more ports still in use on the network.' % rid)

    # -- subnets ---------------------------------------------------------

    def _create_subnets(self, body, project):
        network = self._get('networks', body.get('network_id'))
        if not body.get('cidr'):
            if body.get('subnetpool_id'):
                raise NeutronError(
                    404, 'SubnetPoolNotFound', 'Subnet pool %s could not '
                    'be found.' % body['subnetpool_id'])
            raise _bad('A cidr must be specified in the absence of a '
                       'subnet pool')
        try:
            cidr = ipaddress.ip_network(body['cidr'])
        except ValueError:
            raise _bad("Invalid input for cidr. Reason: '%s' is not a "
                       "valid IP subnet." % body['cidr'], 'InvalidInput')
        version = body.get('ip_version', 4)
        if version not in (4, 6):
            raise _bad("Invalid input for ip_version. Reason: '%s' is not "
                       "in [4, 6]." % (version,), 'InvalidInput')
        if cidr.version != version:
            raise _bad('Invalid input for operation: Cidr %s does not match '
                       'ip_version %s.' % (cidr, version), 'InvalidInput')
        for sid in network['subnets']:
            other = ipaddress.ip_network(self.store['subnets'][sid]['cidr'])
            if cidr.overlaps(other):
                raise _bad(
                    'Invalid input for operation: Requested subnet with '
                    'cidr: %s for network: %s overlaps with another subnet.'
                    % (cidr, network['id']), 'InvalidInput')
        first, last = self._host_range(cidr)
        if 'gateway_ip' in body:
            gateway = body['gateway_ip']
        else:
            gateway = str(type(cidr.network_address)(first))
        subnet = self._new(
            project, name='', network_id=network['id'], ip_version=version,
            cidr=str(cidr), gateway_ip=gateway, enable_dhcp=True,
            dns_nameservers=[], host_routes=[], ipv6_ra_mode=None,
            ipv6_address_mode=None, subnetpool_id=None, service_types=[])
        subnet.update({k: v for k, v in body.items()
                       if k not in CREATE_ONLY | {'cidr', 'ip_version'}})
        if 'allocation_pools' not in body:
            subnet['allocation_pools'] = self._pools(cidr, first, last,
                                                     gateway)
        network['subnets'].append(subnet['id'])
        return subnet

    @staticmethod
    def _host_range(cidr):
        first = int(cidr.network_address)
        last = int(cidr.broadcast_address)
        if cidr.num_addresses > 2:
            first += 1
            if cidr.version == 4:
                last -= 1
        return first, last

    @staticmethod
    def _pools(cidr, first, last, gateway):
        ranges = [(first, last)]
        if gateway and first <= int(_ip(gateway)) <= last:
            g = int(_ip(gateway))
            ranges = [(first, g - 1), (g + 1, last)]
        make = type(cidr.network_address)
        return [{'start': str(make(a)), 'end': str(make(b))}
                for a, b in ranges if a <= b]

    def _check_delete_subnets(self, rid):
        for port in self._ports_on(subnet_id=rid):
            if port['device_owner'] not in AUTO_DELETED_OWNERS:
                raise NeutronError(
                    409, 'SubnetInUse',
                    'Unable to complete operation on subnet %s: One or more '
                    'ports have an IP allocation from this subnet.' % rid)

    # -- ports -----------------------------------------------------------

    def _used(self, subnet_id, but=None):
        return {f['ip_address']
                for port in self._ports_on(subnet_id=subnet_id)
                if port['id'] != but
                for f in port['fixed_ips'] if f['subnet_id'] == subnet_id}

    def _free_ip(self, subnet, taken):
        make = (ipaddress.IPv4Address if subnet['ip_version'] == 4
                else ipaddress.IPv6Address)
        for pool in subnet['allocation_pools']:
            start = int(ipaddress.ip_address(pool['start']))
            end = int(ipaddress.ip_address(pool['end']))
            for n in range(start, end + 1):
                address = str(make(n))
                if address not in taken:
                    return address
        return None

    def _allocate(self, network, requested, port_id=None):
        """The fixed_ips of a port: ``requested`` as a port's body gives
        them, or None for Neutron's choice."""
        subnets = [self.store['subnets'][s] for s in network['subnets']]
        chosen = []
        taken = {}
        for subnet in subnets:
            taken[subnet['id']] = self._used(subnet['id'], port_id)

        def take(subnet, address=None):
            if address is None:
                address = self._free_ip(subnet, taken[subnet['id']])
                if address is None:
                    raise NeutronError(
                        409, 'IpAddressGenerationFailure',
                        'No more IP addresses available on network %s.'
                        % network['id'])
            elif address in taken[subnet['id']]:
                raise NeutronError(
                    409, 'IpAddressAlreadyAllocated',
                    'IP address %s already allocated in subnet %s'
                    % (address, subnet['id']))
            taken[subnet['id']].add(address)
            chosen.append({'subnet_id': subnet['id'], 'ip_address': address})

        if requested is None:
            for version in (4, 6):
                mine = [s for s in subnets if s['ip_version'] == version]
                for subnet in mine:
                    if self._free_ip(subnet, taken[subnet['id']]):
                        take(subnet)
                        break
                else:
                    if mine:
                        take(mine[0])   # raises: no address left
            return chosen
        if not isinstance(requested, list):
            raise _bad('Invalid input for fixed_ips.', 'InvalidInput')
        for want in requested:
            sid = want.get('subnet_id')
            address = want.get('ip_address')
            if address is not None:
                address = _ip(address)
            if sid:
                subnet = self._get('subnets', sid)
                if subnet['network_id'] != network['id']:
                    raise _bad(
                        'Invalid input for operation: Failed to create port '
                        'on network %s, because fixed_ips included invalid '
                        'subnet %s.' % (network['id'], sid), 'InvalidInput')
                if (address is not None and address
                        not in ipaddress.ip_network(subnet['cidr'])):
                    raise _bad('IP address %s is not a valid IP for the '
                               'specified subnet.' % address,
                               'InvalidIpForSubnet')
            elif address is not None:
                for subnet in subnets:
                    if address in ipaddress.ip_network(subnet['cidr']):
                        break
                else:
                    raise _bad('IP address %s is not a valid IP for any of '
                               'the subnets on the specified network.'
                               % address, 'InvalidIpForNetwork')
            else:
                raise _bad('Invalid input for operation: IP allocation '
                           'requires subnet_id or ip_address.',
                           'InvalidInput')
            take(subnet, None if address is None else str(address))
        return chosen

    def _mac(self):
        used = {p['mac_address'] for p in self.store['ports'].values()}
        while True:
            mac = 'fa:16:3e:%02x:%02x:%02x' % tuple(
                random.randrange(256) for _ in range(3))
            if mac not in used:
                return mac

    def _security_groups(self, port, wanted):
        if wanted is None:
            if (not port['port_security_enabled']
                    or port['device_owner'].startswith('network:')):
                return []
            return [self._default_security_group(port['project_id'])['id']]
        if not isinstance(wanted, list):
            raise _bad('Invalid input for security_groups.', 'InvalidInput')
        for sg in wanted:
            self._get('security_groups', sg)
        if wanted and not port['port_security_enabled']:
            raise _bad('Port has port security disabled and therefore '
                       'cannot have security groups.',
                       'PortSecurityAndIPRequiredForSecurityGroups')
        return list(dict.fromkeys(wanted))

    @staticmethod
    def _bind(port):
        """status and binding:vif_type from the rest, as ML2 reports
        them once its mechanism driver has bound the port."""
        if port['binding:host_id'] is None:
            port['binding:host_id'] = ''
        if port['binding:profile'] is None:
            port['binding:profile'] = {}
        network_owned = port['device_owner'].startswith('network:')
        port['binding:vif_type'] = ('ovs' if port['binding:host_id']
                                    else 'unbound')
        up = bool(port['binding:host_id']) or network_owned
        port['status'] = ('ACTIVE' if up and port['admin_state_up']
                          else 'DOWN')

    def _create_ports(self, body, project):
        network = self._get('networks', body.get('network_id'))
        port = self._new(
            project, name='', network_id=network['id'],
            admin_state_up=True, device_id='', device_owner='',
            port_security_enabled=network.get('port_security_enabled',
                                              True))
        port.update({
            'binding:host_id': '', 'binding:profile': {},
            'binding:vnic_type': 'normal', 'binding:vif_details': {}})
        port.update({k: v for k, v in body.items()
                     if k not in CREATE_ONLY | {'fixed_ips',
                                                'security_groups'}})
        if port.get('mac_address') is None:
            port['mac_address'] = self._mac()
        elif any(p['mac_address'] == port['mac_address']
                 and p['network_id'] == network['id']
                 for p in self.store['ports'].values()):
            raise NeutronError(
                409, 'MacAddressInUse',
                'Unable to complete operation for network %s. The mac '
                'address %s is in use.' % (network['id'],
                                           port['mac_address']))
        port['fixed_ips'] = self._allocate(network, body.get('fixed_ips'))
        port['security_groups'] = self._security_groups(
            port, body.get('security_groups'))
        self._bind(port)
        return port

    def _update_ports(self, port, body):
        body = dict(body)
        if 'fixed_ips' in body:
            network = self._get('networks', port['network_id'])
            body['fixed_ips'] = self._allocate(network, body['fixed_ips'],
                                               port['id'])
        changed = dict(port, **body)
        if 'security_groups' in body:
            changed['security_groups'] = self._security_groups(
                changed, body['security_groups'] or [])
        self._bind(changed)
        port.update(changed)

    def _check_delete_ports(self, rid):
        port = self.store['ports'][rid]
        if port['device_owner'] == ROUTER_INTERFACE:
            raise NeutronError(
                409, 'L3PortInUse',
                'Port %s has owner %s and therefore cannot be deleted '
                'directly via the port API.' % (rid, ROUTER_INTERFACE))

    # -- routers ---------------------------------------------------------

    def _gateway(self, info):
        if not info:
            return None
        network = self._get('networks', info.get('network_id'))
        if not network['router:external']:
            raise _bad('Bad router request: Network %s is not an external '
                       'network.' % network['id'])
        return dict({'enable_snat': True, 'external_fixed_ips': []}, **info)

    def _create_routers(self, body, project):
        router = self._new(project, name='', admin_state_up=True,
                           status='ACTIVE', routes=[])
        router.update({k: v for k, v in body.items()
                       if k not in CREATE_ONLY})
        router['external_gateway_info'] = self._gateway(
            body.get('external_gateway_info'))
        return router

    def _update_routers(self, router, body):
        body = dict(body)
        if 'external_gateway_info' in body:
            body['external_gateway_info'] = self._gateway(
                body['external_gateway_info'])
        router.update(body)

    def _interfaces(self, router_id):
        return [p for p in self.store['ports'].values()
                if p['device_id'] == router_id
                and p['device_owner'] == ROUTER_INTERFACE]

    def _check_delete_routers(self, rid):
        if self._interfaces(rid):
            raise NeutronError(409, 'RouterInUse',
                               'Router %s still has ports' % rid)

    @staticmethod
    def _interface_info(router, port):
        subnets = [f['subnet_id'] for f in port['fixed_ips']]
        return {'id': router['id'], 'tenant_id': port['tenant_id'],
                'project_id': port['project_id'], 'port_id': port['id'],
                'network_id': port['network_id'],
                'subnet_id': subnets[-1] if subnets else None,
                'subnet_ids': subnets}

    @staticmethod
    def _interface_request(body):
        if not isinstance(body, dict):
            raise _bad('Resource body required')
        if body.get('subnet_id') and body.get('port_id'):
            raise _bad('Bad router request: Cannot specify both subnet-id '
                       'and port-id.')
        if not (body.get('subnet_id') or body.get('port_id')):
            raise _bad('Bad router request: Either subnet_id or port_id '
                       'must be specified.')
        return body.get('subnet_id'), body.get('port_id')

    def add_router_interface(self, router_id, body):
        with self.lock:
            router = self._get('routers', router_id)
            subnet_id, port_id = self._interface_request(body)
            if port_id:
                port = self._get('ports', port_id)
                if port['device_id']:
                    raise NeutronError(
                        409, 'PortInUse',
                        'Unable to complete operation on port %s for '
                        'network %s. Port already has an attached device '
                        '%s.' % (port_id, port['network_id'],
                                 port['device_id']))
                if not port['fixed_ips']:
                    raise _bad('Bad router request: Router port must have '
                               'at least one fixed IP.')
                port.update(device_id=router_id,
                            device_owner=ROUTER_INTERFACE,
                            security_groups=[], updated_at=_now())
                self._bind(port)
                return self._interface_info(router, port)
            subnet = self._get('subnets', subnet_id)
            if not subnet['gateway_ip']:
                raise _bad('Bad router request: Subnet for router interface '
                           'must have a gateway IP.')
            for port in self._interfaces(router_id):
                if any(f['subnet_id'] == subnet_id
                       for f in port['fixed_ips']):
                    raise _bad('Bad router request: Router already has a '
                               'port on subnet %s.' % subnet_id)
            port = self._create_ports({
                'network_id': subnet['network_id'],
                'fixed_ips': [{'subnet_id': subnet_id,
                               'ip_address': subnet['gateway_ip']}],
                'device_id': router_id, 'device_owner': ROUTER_INTERFACE,
                'admin_state_up': True}, subnet['project_id'])
            self.store['ports'][port['id']] = port
            return self._interface_info(router, port)

    def remove_router_interface(self, router_id, body):
        with self.lock:
            router = self._get('routers', router_id)
            subnet_id, port_id = self._interface_request(body)
            ports = self._interfaces(router_id)
            if port_id:
                found = [p for p in ports if p['id'] == port_id]
                if not found:
                    raise NeutronError(
                        404, 'RouterInterfaceNotFound',
                        'Router %s does not have an interface with id %s'
                        % (router_id, port_id))
            else:
                found = [p for p in ports
                         if any(f['subnet_id'] == subnet_id
                                for f in p['fixed_ips'])]
                if not found:
                    self._get('subnets', subnet_id)
                    raise NeutronError(
                        404, 'RouterInterfaceNotFoundForSubnet',
                        'Router %s has no interface on subnet %s'
                        % (router_id, subnet_id))
            port = found[0]
            del self.store['ports'][port['id']]
            return self._interface_info(router, port)

    # -- security groups -------------------------------------------------

    def _rule(self, group, project, direction, ethertype, **attrs):
        rule = self._new(
            project, security_group_id=group['id'], direction=direction,
            ethertype=ethertype, protocol=None, port_range_min=None,
            port_range_max=None, remote_ip_prefix=None,
            remote_group_id=None)
        rule.update(attrs)
        self.store['security_group_rules'][rule['id']] = rule
        return rule

    def _default_security_group(self, project):
        for group in self.store['security_groups'].values():
            if group['project_id'] == project and group['name'] == 'default':
                return group
        group = self._new(project, name='default',
                          description='Default security group',
                          stateful=True, shared=False)
        self.store['security_groups'][group['id']] = group
        for ethertype in ('IPv4', 'IPv6'):
            self._rule(group, project, 'egress', ethertype)
            self._rule(group, project, 'ingress', ethertype,
                       remote_group_id=group['id'])
        return group

    def _create_security_groups(self, body, project):
        self._default_security_group(project)
        group = self._new(project, name='', stateful=True, shared=False)
        group.update({k: v for k, v in body.items()
                      if k not in CREATE_ONLY})
        for ethertype in ('IPv4', 'IPv6'):
            self._rule(group, project, 'egress', ethertype)
        return group

    def _check_delete_security_groups(self, rid):
        for port in self.store['ports'].values():
            if rid in port['security_groups']:
                raise NeutronError(409, 'SecurityGroupInUse',
                                   'Security Group %s in use.' % rid)

    def _create_security_group_rules(self, body, project):
        group = self._get('security_groups', body.get('security_group_id'))
        if not (body.get('project_id') or body.get('tenant_id')):
            project = group['project_id']
        if body.get('direction') not in ('ingress', 'egress'):
            raise _bad("Invalid input for direction. Reason: '%s' is not in "
                       "['ingress', 'egress']." % body.get('direction'),
                       'InvalidInput')
        if body.get('remote_group_id'):
            self._get('security_groups', body['remote_group_id'])
        rule = self._new(
            project, security_group_id=group['id'], ethertype='IPv4',
            protocol=None, port_range_min=None, port_range_max=None,
            remote_ip_prefix=None, remote_group_id=None)
        rule.update({k: v for k, v in body.items()
                     if k not in CREATE_ONLY})
        same = ('security_group_id', 'direction', 'ethertype', 'protocol',
                'port_range_min', 'port_range_max', 'remote_ip_prefix',
                'remote_group_id')
        for other in self.store['security_group_rules'].values():
            if all(other.get(k) == rule.get(k) for k in same):
                raise NeutronError(
                    409, 'SecurityGroupRuleExists',
                    'Security group rule already exists. Rule id is %s.'
                    % other['id'])
        return rule

    # -- floating IPs ----------------------------------------------------

    def _create_floatingips(self, body, project):
        if not body.get('floating_network_id'):
            raise _bad("Invalid input for floating_network_id. Reason: "
                       "'None' is not a valid UUID.", 'InvalidInput')
        self._get('networks', body['floating_network_id'])
        raise _bad('Floating IPs are not implemented by this Neutron '
                   'stand-in.')

    # -- quotas ----------------------------------------------------------

    def quota(self, project):
        with self.lock:
            return dict(QUOTA_DEFAULTS, **self.quotas.get(project, {}))

    def quota_details(self, project):
        with self.lock:
            limits = self.quota(project)
            return {name: {'limit': limit, 'reserved': 0,
                           'used': sum(
                               1 for item in self.store[
                                   QUOTA_COLLECTIONS[name]].values()
                               if item['project_id'] == project)}
                    for name, limit in limits.items()}

    def set_quota(self, project, body):
        with self.lock:
            if not isinstance(body, dict):
                raise _bad('Resource body required')
            for name, limit in body.items():
                if name not in QUOTA_DEFAULTS:
                    raise _bad('Unrecognized attribute(s) %s' % name)
                if not isinstance(limit, int) or limit < -1:
                    raise _bad("Invalid input for %s. Reason: '%s' is not a "
                               "valid limit." % (name, limit),
                               'InvalidInput')
            self.quotas.setdefault(project, {}).update(body)
            return self.quota(project)

    def quota_list(self):
        with self.lock:
            return [dict(self.quota(p), project_id=p, tenant_id=p)
                    for p in self.quotas]


class _Handler(server.BaseHTTPRequestHandler):
    server_version = 'NeutronStub'

    def log_message(self, fmt, *args):
        pass

    def _send(self, status, body=None):
        self.send_response(status)
        self.send_header('X-Openstack-Request-Id', 'req-%s' % uuid.uuid4())
        if body is None:
            self.end_headers()
            return
        data = json.dumps(body).encode()
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self):
        stub = self.server.stub
        stub.log.append('%s %s' % (self.command, self.path))
        length = int(self.headers.get('Content-Length') or 0)
        raw = self.rfile.read(length) if length else b''
        try:
            status, body = stub.dispatch(self.command, self.path, raw,
                                         self.headers)
        except NeutronError as e:
            status, body = e.status, e.body()
        except Exception as e:  # a bug here: say so, as Neutron would
            status, body = 500, NeutronError(
                500, 'HTTPInternalServerError', repr(e)).body()
        self._send(status, body)

    do_GET = do_POST = do_PUT = do_DELETE = _handle


class NeutronStub:
    """``Neutron`` served over HTTP on 127.0.0.1, from a daemon thread."""

    def __init__(self, port=0):
        self.neutron = Neutron()
        self.log = []
        self.httpd = server.ThreadingHTTPServer(('127.0.0.1', port),
                                                _Handler)
        self.httpd.stub = self
        self.port = self.httpd.server_port
        self.url = 'http://127.0.0.1:%d' % self.port
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={'poll_interval': 0.1},
            daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        if self.thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()

    def resources(self, collection):
        """A copy of every resource of a collection ('ports',
        'security_groups', ...), in the order they were made."""
        with self.neutron.lock:
            return [self.neutron._view(collection, item)
                    for item in self.neutron.store[collection].values()]

    def _versions(self):
        return {'versions': [{
            'id': 'v2.0', 'status': 'CURRENT',
            'links': [{'rel': 'self', 'href': self.url + '/v2.0/'}]}]}

    def dispatch(self, method, target, raw, headers):
        """(status, body) of a request."""
        url = parse.urlsplit(target)
        path = url.path.rstrip('/')
        if path.endswith('.json'):
            path = path[:-len('.json')]
        query = parse.parse_qs(url.query, keep_blank_values=True)
        body = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                raise _bad('Malformed request body', 'MalformedRequestBody')
        project = headers.get('X-Project-Id')
        neutron = self.neutron
        parts = path.split('/')[1:]

        def allow(*methods):
            if method not in methods:
                raise NeutronError(405, 'HTTPMethodNotAllowed',
                                   '%s is not allowed on %s' % (method,
                                                                path))

        def member(key):
            if not isinstance(body, dict) or key not in body:
                raise _bad('Resource body required')
            return body[key]

        if path in ('', '/v2.0'):
            allow('GET')
            return 200, self._versions()
        if len(parts) >= 2 and parts[0] == 'v2.0':
            name, rest = parts[1], parts[2:]
            if name == 'extensions' and len(rest) <= 1:
                allow('GET')
                extensions = [{'alias': alias, 'name': title,
                               'description': text, 'links': [],
                               'updated': '2026-01-01T00:00:00-00:00'}
                              for alias, title, text in EXTENSIONS]
                if not rest:
                    return 200, {'extensions': extensions}
                for extension in extensions:
                    if extension['alias'] == rest[0]:
                        return 200, {'extension': extension}
                raise NeutronError(404, 'HTTPNotFound',
                                   'Extension %s not found.' % rest[0])
            if name == 'quotas':
                return self._quotas(method, rest, body, allow, member)
            if name in COLLECTIONS:
                collection, one = COLLECTIONS[name][:2]
                if not rest:
                    allow('GET', 'POST')
                    if method == 'GET':
                        return 200, {collection: neutron.list(
                            collection, query, project)}
                    if isinstance(body, dict) and collection in body:
                        return 201, {collection: neutron.create(
                            collection, body[collection], project)}
                    return 201, {one: neutron.create(
                        collection, member(one), project)}
                if len(rest) == 1:
                    allow('GET', 'PUT', 'DELETE')
                    if method == 'GET':
                        return 200, {one: neutron.show(
                            collection, rest[0], query.get('fields'))}
                    if method == 'PUT':
                        return 200, {one: neutron.update(
                            collection, rest[0], member(one))}
                    neutron.delete(collection, rest[0])
                    return 204, None
                if name == 'routers' and len(rest) == 2 and rest[1] in (
                        'add_router_interface', 'remove_router_interface'):
                    allow('PUT')
                    action = getattr(neutron, rest[1])
                    return 200, action(rest[0], body)
            if method == 'GET' and not rest and re.fullmatch(r'[a-z_-]+',
                                                             name):
                # A collection of another extension (QoS policies,
                # trunks, availability zones...: what a dashboard lists):
                # empty, as a Neutron without those resources in use.
                return 200, {name.replace('-', '_'): []}
        raise NeutronError(404, 'HTTPNotFound',
                           'The resource could not be found: %s %s '
                           '(not implemented by this Neutron stand-in)'
                           % (method, path))

    def _quotas(self, method, rest, body, allow, member):
        neutron = self.neutron
        if not rest:
            allow('GET')
            return 200, {'quotas': neutron.quota_list()}
        project = rest[0]
        if len(rest) == 1:
            allow('GET', 'PUT', 'DELETE')
            if method == 'GET':
                return 200, {'quota': neutron.quota(project)}
            if method == 'PUT':
                return 200, {'quota': neutron.set_quota(project,
                                                        member('quota'))}
            with neutron.lock:
                neutron.quotas.pop(project, None)
            return 204, None
        if len(rest) == 2 and rest[1] in ('details', 'default'):
            allow('GET')
            if rest[1] == 'details':
                return 200, {'quota': neutron.quota_details(project)}
            return 200, {'quota': dict(QUOTA_DEFAULTS)}
        raise NeutronError(404, 'HTTPNotFound',
                           'The resource could not be found: %s /v2.0/'
                           'quotas/%s' % (method, '/'.join(rest)))

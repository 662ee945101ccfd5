"""The Neutron stand-in of the end-to-end tests (tests/e2e/neutron_stub.py),
driven as its users drive Neutron: Tempest's own network service clients
(as its dynamic credentials give a project a network, a subnet and a
router, and clean them up), and python-neutronclient as Nova uses it to
boot, bind, migrate and delete a server's port.  Nova itself is not
imported: it would monkey-patch this process with eventlet."""

import json
import urllib.error
import urllib.request
import uuid

import pytest
from keystoneauth1 import session as ksa_session
from keystoneauth1 import token_endpoint
from neutronclient.common import exceptions as nexc
from neutronclient.v2_0 import client as neutron_client
from tempest.lib import auth
from tempest.lib import exceptions as lib_exc
from tempest.lib.services.network import networks_client
from tempest.lib.services.network import ports_client
from tempest.lib.services.network import routers_client
from tempest.lib.services.network import security_group_rules_client
from tempest.lib.services.network import security_groups_client
from tempest.lib.services.network import subnets_client

from tests.e2e import neutron_stub


class StubAuthProvider(auth.AuthProvider):
    """Tempest's requests to the stub, with a fixed token (the stub does
    not check it) and the stub as the catalog's network endpoint."""

    def __init__(self, url):
        super().__init__(auth.KeystoneV3Credentials(
            username='admin', password='secret', project_name='admin',
            user_domain_name='Default', project_domain_name='Default'))
        self.url = url

    def _decorate_request(self, filters, method, url, headers=None,
                          body=None, auth_data=None):
        headers = dict(headers or {}, **{'X-Auth-Token': 'token'})
        return '%s/%s' % (self.url, url), headers, body

    def _get_auth(self):
        return 'token', {}

    def _fill_credentials(self, auth_data_body):
        pass

    def is_expired(self, auth_data):
        return False

    def base_url(self, filters, auth_data=None):
        return self.url


class Tempest:
    """The network clients of Tempest's dynamic credentials."""

    def __init__(self, url):
        provider = StubAuthProvider(url)
        args = (provider, 'network', 'RegionOne')
        self.networks = networks_client.NetworksClient(*args)
        self.subnets = subnets_client.SubnetsClient(*args)
        self.routers = routers_client.RoutersClient(*args)
        self.ports = ports_client.PortsClient(*args)
        self.security_groups = (
            security_groups_client.SecurityGroupsClient(*args))
        self.security_group_rules = (
            security_group_rules_client.SecurityGroupRulesClient(*args))


@pytest.fixture(scope='module')
def stub():
    s = neutron_stub.NeutronStub().start()
    yield s
    s.stop()


@pytest.fixture(scope='module')
def tempest(stub):
    return Tempest(stub.url)


@pytest.fixture(params=['endpoint_url', 'session'])
def neutron(stub, request):
    """python-neutronclient: with an endpoint and a token, and as Nova
    builds it (a keystoneauth session, ``[neutron] endpoint_override``)."""
    if request.param == 'endpoint_url':
        return neutron_client.Client(endpoint_url=stub.url, token='x')
    return neutron_client.Client(
        session=ksa_session.Session(),
        auth=token_endpoint.Token(stub.url, 'x'),
        endpoint_override=stub.url)


def raw(stub, method, path, body=None):
    """(status, parsed body) of a plain HTTP request."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(stub.url + path, data=data, method=method,
                                 headers={'Content-Type': 'application/json'})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            text = resp.read()
            return resp.status, json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def project_network(tempest, project, cidr='10.100.0.0/28'):
    """A network, subnet and router with an interface, as Tempest's
    dynamic credentials make them (tempest/lib/common/dynamic_creds.py)."""
    network = tempest.networks.create_network(
        name='net', project_id=project)['network']
    subnet = tempest.subnets.create_subnet(
        network_id=network['id'], cidr=cidr, name='subnet',
        project_id=project, ip_version=4)['subnet']
    router = tempest.routers.create_router(
        name='router', project_id=project)['router']
    tempest.routers.add_router_interface(router['id'],
                                         subnet_id=subnet['id'])
    return network, subnet, router


def test_versions_and_extensions(stub, neutron):
    for path in ('/', '/v2.0', '/v2.0/'):
        status, body = raw(stub, 'GET', path)
        assert status == 200
        assert body['versions'][0]['id'] == 'v2.0'
        assert body['versions'][0]['links'][0]['href'] == (
            stub.url + '/v2.0/')
    aliases = {e['alias'] for e in neutron.list_extensions()['extensions']}
    assert {'binding', 'security-group', 'quotas', 'router',
            'external-net'} <= aliases
    # Nova would use APIs the stub lacks.
    assert not aliases & {'binding-extended', 'dns-integration',
                          'multi-provider', 'port-resource-request-groups',
                          'security-groups-shared-filtering', 'segment'}
    assert neutron.show_extension('binding')['extension']['alias'] == (
        'binding')


def test_dynamic_credentials_network_and_its_cleanup(stub, tempest):
    project = 'p-dynamic'
    network, subnet, router = project_network(tempest, project)
    assert network['status'] == 'ACTIVE' and network['mtu'] == 1450
    assert network['project_id'] == network['tenant_id'] == project
    assert subnet['gateway_ip'] == '10.100.0.1'
    assert subnet['allocation_pools'] == [
        {'start': '10.100.0.2', 'end': '10.100.0.14'}]
    assert subnet['enable_dhcp'] is True
    assert tempest.networks.show_network(network['id'])['network'][
        'subnets'] == [subnet['id']]
    # dynamic_creds tries the next CIDR on an overlap in the network...
    with pytest.raises(lib_exc.BadRequest) as e:
        tempest.subnets.create_subnet(
            network_id=network['id'], cidr='10.100.0.0/28',
            project_id=project, ip_version=4)
    assert 'overlaps with another subnet' in str(e.value)
    # ...which another network may use.
    other = tempest.networks.create_network(project_id='p-other')['network']
    tempest.subnets.create_subnet(network_id=other['id'],
                                  cidr='10.100.0.0/28', ip_version=4)
    tempest.networks.delete_network(other['id'])

    interface, = tempest.ports.list_ports(device_id=router['id'])['ports']
    assert interface['device_owner'] == 'network:router_interface'
    assert interface['fixed_ips'] == [{'subnet_id': subnet['id'],
                                       'ip_address': '10.100.0.1'}]
    assert interface['project_id'] == project
    assert interface['security_groups'] == []
    # Out of order, Neutron refuses.
    with pytest.raises(lib_exc.Conflict):
        tempest.routers.delete_router(router['id'])
    with pytest.raises(lib_exc.Conflict):
        tempest.subnets.delete_subnet(subnet['id'])
    with pytest.raises(lib_exc.Conflict):
        tempest.networks.delete_network(network['id'])
    with pytest.raises(lib_exc.Conflict):
        tempest.ports.delete_port(interface['id'])

    # dynamic_creds' _clear_isolated_net_resources and clear_creds.
    info = tempest.routers.remove_router_interface(
        router['id'], subnet_id=subnet['id'])
    assert info['port_id'] == interface['id']
    assert info['subnet_id'] == subnet['id']
    with pytest.raises(lib_exc.NotFound):
        tempest.routers.remove_router_interface(router['id'],
                                                subnet_id=subnet['id'])
    tempest.routers.delete_router(router['id'])
    tempest.subnets.delete_subnet(subnet['id'])
    tempest.networks.delete_network(network['id'])
    groups = tempest.security_groups.list_security_groups(
        project_id=project, name='default')['security_groups']
    assert len(groups) == 1
    for group in groups:
        tempest.security_groups.delete_security_group(group['id'])
    for collection in ('networks', 'subnets', 'routers', 'ports'):
        assert not [r for r in stub.resources(collection)
                    if r['project_id'] == project], collection
    assert not [r for r in stub.resources('security_group_rules')
                if r['project_id'] == project]


def test_a_server_port_as_nova_makes_binds_moves_and_deletes_it(
        stub, tempest, neutron):
    project = 'p-nova-%s' % uuid.uuid4()
    network, subnet, _ = project_network(tempest, project)
    instance = str(uuid.uuid4())

    # validate_networks, allocate_for_instance's network checks.
    assert neutron.show_quota(project)['quota']['port'] == 500
    assert neutron.list_ports(tenant_id=project, fields=['id'])['ports']
    nets = neutron.list_networks(tenant_id=project, shared=False)
    assert [n['id'] for n in nets['networks']] == [network['id']]
    assert neutron.list_networks(shared=True)['networks'] == []
    nets = neutron.list_networks(id=[network['id'], 'no-such-network'])
    assert [n['id'] for n in nets['networks']] == [network['id']]
    assert neutron.show_network(
        network['id'],
        fields=['provider:physical_network', 'provider:network_type'],
    )['network'] == {}

    # _create_port_minimal, then _update_port with the binding.
    port = neutron.create_port({'port': {
        'device_id': instance, 'network_id': network['id'],
        'admin_state_up': True, 'tenant_id': project}})['port']
    assert port['status'] == 'DOWN'
    assert port['binding:vif_type'] == 'unbound'
    assert port['binding:vnic_type'] == 'normal'
    assert port['binding:host_id'] == ''
    assert port['mac_address'].startswith('fa:16:3e:')
    assert port['fixed_ips'] == [{'subnet_id': subnet['id'],
                                  'ip_address': '10.100.0.2'}]
    default, = neutron.list_security_groups(
        tenant_id=project, name='default')['security_groups']
    assert port['security_groups'] == [default['id']]
    port = neutron.update_port(port['id'], {'port': {
        'device_id': instance, 'device_owner': 'compute:nova',
        'binding:host_id': 'compute1'}})['port']
    assert port['status'] == 'ACTIVE'
    assert port['binding:vif_type'] == 'ovs'
    assert port['binding:vif_details'] == {}
    assert port['binding:profile'] == {}

    # _build_network_info_model.
    ports = neutron.list_ports(tenant_id=project, device_id=instance)
    assert [p['id'] for p in ports['ports']] == [port['id']]
    assert neutron.list_floatingips(fixed_ip_address='10.100.0.2',
                                    port_id=port['id'])['floatingips'] == []
    subnets = neutron.list_subnets(id=[subnet['id']])['subnets']
    assert [s['cidr'] for s in subnets] == ['10.100.0.0/28']
    assert neutron.list_ports(network_id=network['id'],
                              device_owner='network:dhcp')['ports'] == []
    # The servers API's security groups of a server.
    ports = neutron.list_ports(device_id=[instance],
                               fields=['security_groups', 'device_id'])
    assert ports['ports'] == [{'security_groups': [default['id']],
                               'device_id': instance}]
    groups = neutron.list_security_groups(id=[default['id']],
                                          fields=['id', 'name'])
    assert groups['security_groups'] == [{'id': default['id'],
                                          'name': 'default'}]
    # _ports_needed_per_instance: who has this address.
    found = neutron.list_ports(network_id=network['id'],
                               fixed_ips='ip_address=10.100.0.2',
                               fields='device_id')['ports']
    assert found == [{'device_id': instance}]

    # Live migration without binding-extended: setup_networks_on_host
    # marks the destination, migrate_instance_finish moves the binding.
    ports = neutron.list_ports(device_id=instance, tenant_id=project,
                               **{'binding:host_id': 'compute1'})['ports']
    assert len(ports) == 1
    neutron.update_port(port['id'], {'port': {
        'binding:profile': {'migrating_to': 'compute2'}}})
    port = neutron.update_port(port['id'], {'port': {
        'binding:host_id': 'compute2', 'device_owner': 'compute:nova',
        'binding:profile': {}}})['port']
    assert port['binding:host_id'] == 'compute2'
    assert port['binding:profile'] == {}
    assert port['status'] == 'ACTIVE'
    assert neutron.list_ports(**{'binding:host_id': 'compute1'})[
        'ports'] == []

    # _unbind_ports, then deallocate_for_instance.
    shown = neutron.show_port(port['id'],
                              fields=['binding:profile', 'network_id'])
    assert set(shown['port']) == {'binding:profile', 'network_id'}
    port = neutron.update_port(port['id'], {'port': {
        'binding:host_id': None, 'binding:profile': {}}})['port']
    assert port['binding:host_id'] == ''
    assert port['binding:vif_type'] == 'unbound'
    assert port['status'] == 'DOWN'
    for p in neutron.list_ports(device_id=instance)['ports']:
        neutron.delete_port(p['id'])
    with pytest.raises(nexc.PortNotFoundClient):
        neutron.show_port(port['id'])
    with pytest.raises(nexc.NotFound) as e:
        neutron.delete_port(port['id'])
    assert e.value.status_code == 404


def test_fixed_ip_requests_and_exhaustion(tempest, neutron):
    network = tempest.networks.create_network(
        project_id='p-ips')['network']
    subnet = tempest.subnets.create_subnet(
        network_id=network['id'], cidr='192.168.7.0/29',
        ip_version=4)['subnet']
    assert subnet['allocation_pools'] == [
        {'start': '192.168.7.2', 'end': '192.168.7.6'}]
    asked = neutron.create_port({'port': {
        'network_id': network['id'],
        'fixed_ips': [{'ip_address': '192.168.7.5'}]}})['port']
    assert asked['fixed_ips'][0]['ip_address'] == '192.168.7.5'
    with pytest.raises(nexc.IpAddressAlreadyAllocatedClient):
        neutron.create_port({'port': {
            'network_id': network['id'],
            'fixed_ips': [{'ip_address': '192.168.7.5'}]}})
    with pytest.raises(nexc.InvalidIpForNetworkClient):
        neutron.create_port({'port': {
            'network_id': network['id'],
            'fixed_ips': [{'ip_address': '10.0.0.5'}]}})
    made = [neutron.create_port({'port': {'network_id': network['id']}})
            ['port']['fixed_ips'][0]['ip_address'] for _ in range(4)]
    assert made == ['192.168.7.2', '192.168.7.3', '192.168.7.4',
                    '192.168.7.6']
    with pytest.raises(nexc.IpAddressGenerationFailureClient):
        neutron.create_port({'port': {'network_id': network['id']}})
    with pytest.raises(nexc.NetworkNotFoundClient):
        neutron.create_port({'port': {'network_id': 'no-such-network'}})
    with pytest.raises(nexc.NetworkInUseClient):
        neutron.delete_network(network['id'])


def test_security_groups_default_and_their_own(stub, tempest):
    project = 'p-groups'
    clients = tempest.security_groups
    first = clients.list_security_groups(project_id=project)
    default, = first['security_groups']
    assert default['name'] == 'default'
    rules = {(r['direction'], r['ethertype'], r['remote_group_id'])
             for r in default['security_group_rules']}
    assert rules == {('egress', 'IPv4', None), ('egress', 'IPv6', None),
                     ('ingress', 'IPv4', default['id']),
                     ('ingress', 'IPv6', default['id'])}
    again = clients.list_security_groups(project_id=project)
    assert again['security_groups'] == first['security_groups']

    own = clients.create_security_group(name='web',
                                        project_id=project)
    own = own['security_group']
    assert len(own['security_group_rules']) == 2
    rule = tempest.security_group_rules.create_security_group_rule(
        security_group_id=own['id'], direction='ingress', protocol='tcp',
        port_range_min=22, port_range_max=22)['security_group_rule']
    assert rule['project_id'] == project
    with pytest.raises(lib_exc.Conflict):
        tempest.security_group_rules.create_security_group_rule(
            security_group_id=own['id'], direction='ingress',
            protocol='tcp', port_range_min=22, port_range_max=22)
    shown = clients.show_security_group(own['id'])['security_group']
    assert rule['id'] in [r['id'] for r in shown['security_group_rules']]

    network = tempest.networks.create_network(project_id=project)['network']
    tempest.subnets.create_subnet(network_id=network['id'],
                                  cidr='10.1.0.0/24', ip_version=4)
    port = tempest.ports.create_port(network_id=network['id'],
                                     security_groups=[own['id']])['port']
    assert port['security_groups'] == [own['id']]
    with pytest.raises(lib_exc.Conflict):
        clients.delete_security_group(own['id'])
    tempest.ports.delete_port(port['id'])
    clients.delete_security_group(own['id'])
    with pytest.raises(lib_exc.NotFound):
        tempest.security_group_rules.show_security_group_rule(rule['id'])
    clients.delete_security_group(default['id'])
    # Made again when the project lists its groups.
    remade, = clients.list_security_groups(
        project_id=project, name='default')['security_groups']
    assert remade['id'] != default['id']
    tempest.networks.delete_network(network['id'])


def test_unknown_ids_and_paths_are_404(stub, tempest):
    for call, kind in (
            (tempest.networks.show_network, 'NetworkNotFound'),
            (tempest.subnets.show_subnet, 'SubnetNotFound'),
            (tempest.routers.show_router, 'RouterNotFound'),
            (tempest.ports.show_port, 'PortNotFound'),
            (tempest.security_groups.show_security_group,
             'SecurityGroupNotFound'),
            (tempest.networks.delete_network, 'NetworkNotFound'),
            (tempest.ports.delete_port, 'PortNotFound')):
        with pytest.raises(lib_exc.NotFound) as e:
            call('no-such-id')
        assert kind in str(e.value)
    status, body = raw(stub, 'GET', '/v2.0/floatingips/no-such-id')
    assert status == 404
    assert body['NeutronError']['type'] == 'FloatingIPNotFound'
    assert raw(stub, 'GET', '/v2.0/floatingips') == (
        200, {'floatingips': []})
    status, body = raw(stub, 'GET', '/v2.0/ports/x/bindings')
    assert status == 404
    assert '/v2.0/ports/x/bindings' in body['NeutronError']['message']
    assert 'GET /v2.0/ports/x/bindings' in stub.log
    status, body = raw(stub, 'DELETE', '/v2.0/networks')
    assert status == 405
    # Collections of extensions it does not have are listed empty (a
    # dashboard lists them); anything else of theirs is 404.
    assert raw(stub, 'GET', '/v2.0/qos/policies')[0] == 404
    assert raw(stub, 'GET', '/v2.0/availability_zones') == (
        200, {'availability_zones': []})
    assert raw(stub, 'GET', '/v2.0/trunks/x')[0] == 404


def test_bulk_create_filters_and_quota_details(stub, tempest, neutron):
    project = 'p-bulk'
    made = tempest.networks.create_bulk_networks(networks=[
        {'name': 'a', 'project_id': project},
        {'name': 'b', 'project_id': project, 'shared': True}])['networks']
    assert [n['name'] for n in made] == ['a', 'b']
    a, b = (n['id'] for n in made)
    assert [n['id'] for n in tempest.networks.list_networks(
        id=[a, b])['networks']] == [a, b]
    assert [n['id'] for n in tempest.networks.list_networks(
        id=[a, b], shared=True)['networks']] == [b]
    # All or none.
    with pytest.raises(lib_exc.NotFound):
        tempest.subnets.create_bulk_subnets(subnets=[
            {'network_id': a, 'cidr': '10.2.0.0/24', 'ip_version': 4},
            {'network_id': 'no-such-network', 'cidr': '10.3.0.0/24',
             'ip_version': 4}])
    assert tempest.subnets.list_subnets(network_id=a)['subnets'] == []
    details = neutron.show_quota_details(project)['quota']
    assert details['network'] == {'limit': 100, 'used': 2, 'reserved': 0}
    neutron.update_quota(project, {'quota': {'port': 3}})
    assert neutron.show_quota(project)['quota']['port'] == 3
    neutron.delete_quota(project)
    assert neutron.show_quota(project)['quota']['port'] == 500
    for n in (a, b):
        tempest.networks.delete_network(n)

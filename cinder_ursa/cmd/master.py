"""ursa-master: the metadata service and REST API of an Ursa cluster.

Example::

    ursa-master --config-file /etc/ursa/ursa.conf
"""

import fcntl
import ipaddress
import os
import socket
import struct
import sys
import urllib.parse

from aiohttp import web
from oslo_log import log as logging

from cinder_ursa.cmd import _service
from cinder_ursa.common import auth
from cinder_ursa.common import units
from cinder_ursa.master import api
from cinder_ursa.master import listener
from cinder_ursa.master import opts
from cinder_ursa.master import store as store_mod
from cinder_ursa.transport import metrics as metrics_mod

LOG = logging.getLogger(__name__)


def database_url(conf):
    mc = conf.ursa_master
    if mc.database_connection:
        return mc.database_connection
    os.makedirs(mc.state_dir, exist_ok=True)
    return 'sqlite:///' + os.path.join(mc.state_dir, 'ursa.sqlite')


# The query option of each tooz backend (URL scheme) that is the member
# timeout of its group membership: the lease.  Redis, etcd3 and memcached
# read ``timeout`` as their socket or request timeout (and their member
# timeout only when ``membership_timeout`` is not given); a ZooKeeper
# member is an ephemeral node, gone when its session expires, after
# ``timeout``; the file backend's member times out after ``timeout``.
# tooz's other backends (ipc, mysql, postgresql, kubernetes) have no group
# membership with member expiry.
LEASE_OPTIONS = {
    'file': 'timeout',
    'redis': 'membership_timeout',
    'etcd3+http': 'membership_timeout',
    'etcd3+https': 'membership_timeout',
    'memcached': 'membership_timeout',
    'zookeeper': 'timeout',
    'kazoo': 'timeout',
}


# Backends whose ``timeout`` is their socket or request timeout (30 s by
# default in tooz): a call to a backend that hangs must give up before the
# leader's renew deadline, or the election's thread stays blocked and the
# rounds after it queue up.
SOCKET_TIMEOUTS = {'redis', 'etcd3+http', 'etcd3+https', 'memcached'}


def lease_option(url):
    """(the option of ``url``'s backend that is the lease, its value in
    ``url`` or None); ValueError for a backend without member expiry."""
    parts = urllib.parse.urlsplit(url)
    option = LEASE_OPTIONS.get(parts.scheme)
    if option is None:
        raise ValueError(
            'coordination_url %s: tooz backend %r has no group membership '
            'with member expiry, which the election needs; use one of %s'
            % (url, parts.scheme, ', '.join(sorted(LEASE_OPTIONS))))
    value = urllib.parse.parse_qs(parts.query).get(option)
    return option, float(value[-1]) if value else None


def coordination_url(conf):
    """The tooz backend URL, with the lease as its member timeout (the
    backend's option in LEASE_OPTIONS), on the backends of
    SOCKET_TIMEOUTS half the renew deadline as its socket timeout, and
    tooz's synchronous executor, unless the URL sets them.

    The elector calls tooz from a thread of its own and waits for every
    result: tooz's executor thread would only add a second to each stop
    of the master (its worker polls its queue once a second, and the
    driver's stop waits for it)."""
    mc = conf.ursa_master
    url = mc.coordination_url
    if not url:
        path = os.path.join(os.path.abspath(mc.state_dir), 'coordination')
        os.makedirs(path, exist_ok=True)
        url = 'file://' + path
    option, value = lease_option(url)
    if value is None:
        url = _with_option(url, option, mc.leader_lease)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme in SOCKET_TIMEOUTS and \
            'timeout' not in urllib.parse.parse_qs(parts.query):
        url = _with_option(url, 'timeout',
                           max(1, int(mc.leader_renew_deadline / 2)))
    if 'executor' not in urllib.parse.parse_qs(parts.query):
        url = _with_option(url, 'executor', 'synchronous')
    return url


def _with_option(url, name, value):
    if not isinstance(value, str):
        value = '%d' % value
    return url + ('&' if urllib.parse.urlsplit(url).query else '?') + \
        '%s=%s' % (name, value)


def server_tls(mc):
    """The TLS context of the REST API ([ursa_master] tls_*), None for
    plain HTTP; ValueError naming the option at fault."""
    return _service.server_tls(mc, 'this master')


WILDCARDS = ('', '0.0.0.0', '::', '[::]')
SIOCGIFADDR = 0x8915


def local_hosts():
    """The names and addresses of this host: its host name and FQDN,
    what they resolve to, the IPv4 address of each interface and its
    IPv6 addresses (Linux), and loopback.  What clients may call a
    master bound to a wildcard address."""
    hosts = {'localhost', '127.0.0.1', '::1'}
    name = socket.gethostname()
    hosts.update((name, socket.getfqdn()))
    try:
        hosts.update(info[4][0] for info in socket.getaddrinfo(name, None))
    except OSError:
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, ifname in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack(
                    '256s', ifname[:15].encode()))
            except OSError:
                continue        # no IPv4 address
            hosts.add(socket.inet_ntoa(raw[20:24]))
    try:
        with open('/proc/net/if_inet6') as f:
            for line in f:
                h = line.split()[0]
                hosts.add(str(ipaddress.IPv6Address(int(h, 16))))
    except (OSError, ValueError, IndexError):
        pass
    return hosts


def signature_names(mc, url, port, tls, hosts=local_hosts):
    """The authorities (host:port) this master serves under, which the
    requests it accepts must be signed for (see auth): its URL, its
    bind_host with the port (every name and address of this host, from
    ``hosts()``, when bind_host is a wildcard) and [ursa_master]
    signature_names.  ValueError for a signature_names entry that is no
    host[:port]."""
    names = set()
    own = auth.authority(url)
    if own and own.rpartition(':')[0] not in WILDCARDS:
        names.add(own)
    bound = [mc.bind_host] if mc.bind_host not in WILDCARDS else hosts()
    for host in bound:
        spelled = auth.host_authority('%s:%d' % (
            '[%s]' % host if ':' in host else host, port), tls)
        if spelled:
            names.add(spelled)
    for name in mc.signature_names:
        spelled = auth.host_authority(name, tls)
        if not spelled:
            raise ValueError('signature_names: %r is no host[:port]' % name)
        names.add(spelled)
    return frozenset(names)


def main(argv=None):
    # ursa-master runs on asyncio and threads, never on eventlet; but the
    # election's tooz imports futurist, which imports eventlet whenever
    # it is installed (as it is beside Cinder): half a second of every
    # start, and eventlet's deprecation warning at the head of the log.
    # None in sys.modules makes that import fail as if eventlet were not
    # installed (tooz imports it lazily, at the first election round).
    sys.modules.setdefault('eventlet', None)
    conf = _service.setup(
        sys.argv[1:] if argv is None else argv, 'ursa-master',
        opts.register_opts,
        'Ursa master: volume and chunk metadata, placement, leases, REST '
        'API. Example: ursa-master --config-file /etc/ursa/ursa.conf')
    mc = conf.ursa_master
    key = auth.load_key(conf.ursa.cluster_key_file, conf.ursa.cluster_key)
    os.makedirs(mc.state_dir, exist_ok=True)
    store = store_mod.MetadataStore(
        database_url(conf), mc.failure_domain,
        lease_history_per_volume=mc.lease_history_per_volume,
        lease_handover_timeout=mc.lease_handover_timeout)
    try:
        coord_url = coordination_url(conf)
    except ValueError as e:
        sys.exit('ursa-master: [ursa_master] %s' % e)
    option, lease = lease_option(coord_url)
    if mc.leader_renew_deadline >= lease:
        sys.exit('ursa-master: [ursa_master] leader_renew_deadline (%s s) '
                 'must be shorter than the lease (%s s: leader_lease, or '
                 '%s in the coordination_url)' % (
                     mc.leader_renew_deadline, lease, option))
    try:
        tls = server_tls(mc)
        # Checked now, not once the port is bound.
        signature_names(mc, '', mc.bind_port, tls is not None,
                        hosts=lambda: ())
    except ValueError as e:
        sys.exit('ursa-master: [ursa_master] %s' % e)
    store.upgrade()
    guard = listener.ConnectionGuard(mc.max_connections,
                                     mc.http_header_timeout)
    # Every master exports its metrics, leader or standby (a standby:
    # its leader flag, requests and process; see master.metrics).
    metrics = metrics_mod.ProcessMetrics('master') if mc.metrics_port \
        else None
    master = api.MasterAPI(
        store, key, server_timeout=mc.server_timeout, lease_ttl=mc.lease_ttl,
        ticket_ttl=mc.ticket_ttl,
        default_replicas=mc.default_replicas,
        default_min_replicas=mc.default_min_replicas,
        default_chunk_size=mc.default_chunk_size,
        max_volume_size=mc.max_volume_size,
        max_list_limit=mc.max_list_limit,
        legacy_full_listings=mc.legacy_full_listings,
        replica_grace=mc.replica_grace,
        repair_interval=mc.repair_interval,
        server_startup_timeout=mc.server_startup_timeout,
        slow_disk_period=mc.slow_disk_period,
        slow_disk_factor=mc.slow_disk_factor,
        slow_disk_min_latency=mc.slow_disk_min_latency,
        slow_disk_min_samples=mc.slow_disk_min_samples,
        repair_per_server=mc.repair_per_server,
        rebalance_moves=mc.rebalance_moves,
        rebalance_threshold=mc.rebalance_threshold,
        coordination_url=coord_url,
        renew_deadline=mc.leader_renew_deadline,
        signature_window=mc.signature_window,
        replay_cache=mc.signature_replay_cache,
        accept_legacy_signatures=mc.accept_legacy_signatures,
        body_timeout=mc.http_body_timeout,
        registration_max_body=mc.registration_max_body * units.Mi,
        guard=guard, metrics=metrics)
    if mc.accept_legacy_signatures:
        LOG.warning('[ursa_master] accept_legacy_signatures is true: v1 '
                    'request signatures (replayable, body and query '
                    'unsigned) are accepted; set it to false once every '
                    'client is upgraded')

    async def serve(stop):
        runner = web.AppRunner(master.app(), access_log=None,
                               keepalive_timeout=mc.http_idle_timeout)
        await runner.setup()
        site = listener.BoundedSite(runner, mc.bind_host, mc.bind_port,
                                    guard, ssl_context=tls,
                                    reuse_address=True)
        await site.start()
        port = runner.addresses[0][1]
        url = (mc.advertise_url or '%s://%s:%d' % (
            'https' if tls else 'http', mc.bind_host, port)).rstrip('/')
        master.names = signature_names(mc, url, port, tls is not None)
        LOG.info('Accepting requests signed for %s ([ursa_master] '
                 'signature_names adds more)',
                 ', '.join(sorted(master.names)))
        endpoint = {}
        if metrics is not None:
            try:
                server = await metrics.serve_here(mc.metrics_host,
                                                  mc.metrics_port)
            except OSError as e:
                sys.exit('ursa-master: [ursa_master] metrics_host %s, '
                         'metrics_port %d: %s' % (mc.metrics_host,
                                                  mc.metrics_port, e))
            endpoint['metrics_port'] = server.port
        # A lone master is the leader when this returns.
        await master.service.start_election(url)
        _service.write_endpoint(os.path.join(mc.state_dir, 'endpoint.json'),
                                url=url, pid=os.getpid(), **endpoint)
        LOG.info('ursa-master listening on %s (schema %s, database %s, '
                 '%s)', url, store.schema_version(),
                 store.engine.url.drivername,
                 'leader' if master.service.is_leader() else 'standby')
        await stop.wait()
        LOG.info('ursa-master stopping')
        # Leadership first, handed over at once (see Elector.stop), not
        # after the requests in flight are drained.
        await master.service.stop_election()
        await runner.cleanup()
        if metrics is not None:
            await metrics.close()
        store.close()

    _service.run(serve)


if __name__ == '__main__':
    main()

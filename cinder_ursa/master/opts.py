"""Options of ursa-master, in the ``[ursa_master]`` group."""

from oslo_config import cfg

from cinder_ursa.common import units
from cinder_ursa.protocol import chunkfile
from cinder_ursa.transport import metrics

# The largest multiple of 4 KiB below 2**63: volume sizes and offsets are
# signed 64-bit numbers in SQL (BIGINT), in kernels (loff_t) and in NBD.
MAX_VOLUME_SIZE_LIMIT = 2 ** 63 - chunkfile.BLOCK

master_group = cfg.OptGroup('ursa_master', title='Ursa master',
                            help='Options of the ursa-master service.')

master_opts = [
    cfg.HostAddressOpt('bind_host', default='127.0.0.1',
                       help='Address the REST API listens on.'),
    cfg.PortOpt('bind_port', default=9380,
                help='Port the REST API listens on; 0 picks a free port '
                     '(written to endpoint_file).'),
    cfg.StrOpt('state_dir', default='/var/lib/ursa/master',
               help='Directory for the embedded SQLite database and the '
                    'endpoint file.'),
    cfg.StrOpt('database_connection',
               help='SQLAlchemy URL of the metadata database, for example '
                    'mysql+pymysql://ursa:secret@db/ursa (MySQL, MariaDB) '
                    'or postgresql+psycopg://ursa:secret@db/ursa '
                    '(PostgreSQL). Default: SQLite file '
                    '<state_dir>/ursa.sqlite (several masters only on one '
                    'host).'),
    cfg.StrOpt('failure_domain', default='host',
               choices=['server', 'host', 'rack'],
               help='Replicas of one chunk are placed in distinct failure '
                    'domains of this level.'),
    cfg.FloatOpt('server_timeout', default=15.0, min=0.5,
                 help='Seconds without a heartbeat after which a chunk '
                      'server is marked down.'),
    cfg.FloatOpt('server_startup_timeout', default=60.0, min=0.5,
                 help='After a cold start of the whole cluster (no chunk '
                      'server had sent a heartbeat for server_timeout when '
                      'this master took over), seconds a chunk server it '
                      'has not heard yet gets before it is marked down (at '
                      'least server_timeout): the chunk servers boot after '
                      'the master, and the last one keeps its replicas '
                      'while it boots.  After a master restart or failover '
                      'every server is judged by server_timeout.'),
    cfg.FloatOpt('replica_grace', default=600.0, min=0.0,
                 help='Seconds a chunk server may be down before the '
                      'chunks it held are copied to other servers (a chunk '
                      'left with one copy is copied at once).  A server in '
                      'maintenance (ursa server maintenance) is waited for '
                      'however long it is away.'),
    cfg.FloatOpt('repair_interval', default=10.0, min=0.1,
                 help='Seconds between two looks of the repair planner for '
                      'chunks with fewer copies than their volume asks '
                      'for.'),
    cfg.IntOpt('repair_per_server', default=2, min=1, max=64,
               help='Chunk copies a chunk server takes part in at once, as '
                    'source or target.'),
    cfg.IntOpt('rebalance_moves', default=2, min=0, max=64,
               help='Replicas the repair planner moves at most per round '
                    '(every repair_interval) from the chunk servers holding '
                    'the most replicas to those holding the fewest, when '
                    'no repair, drain or copy is pending: a new server '
                    'fills gradually.  0 turns rebalancing off.'),
    cfg.IntOpt('rebalance_threshold', default=10, min=0, max=100,
               help='Replicas are moved to rebalance only while the '
                    'replica counts of the fullest and the emptiest chunk '
                    'servers differ by more than this percentage of the '
                    'average count per server (and by 2 at least).'),
    cfg.FloatOpt('lease_ttl', default=30.0, min=1.0, max=3600.0,
                 help='Default lifetime in seconds of a volume write lease; '
                      'clients renew it at a third of that.'),
    cfg.FloatOpt('lease_handover_timeout', default=10.0, min=0.0,
                 max=3600.0,
                 help='Seconds the holder of a volume\'s write lease has '
                      'to release it once a live migration\'s destination '
                      '(a standby attachment, see the Cinder driver) asked '
                      'for it at its first write: the source\'s '
                      'ursa-attach sees the request at its next poll, '
                      'flushes and releases. Past this, the destination '
                      'takes the lease by force: a new generation, which '
                      'the chunk servers are told, so a source that did '
                      'not answer (hung, partitioned) can write no more. '
                      'Keep it well below the clients\' io_timeout (60 s '
                      'by default): the destination\'s first write waits '
                      'for the handover.'),
    cfg.IntOpt('lease_history_per_volume', default=100, min=1,
               max=100000,
               help='Lease events (acquire, share, release, leave, revoke, '
                    'fence, expire, takeover; not renewals) the master '
                    'keeps per volume, the newest: older ones are deleted '
                    'as new ones are recorded, in the same transaction. '
                    '"ursa volume lease-history VOLUME --check" proves '
                    'from them that the volume had one writer at a time; '
                    'it can only judge the events kept. A deleted '
                    'volume\'s events go with it.'),
    cfg.FloatOpt('ticket_ttl', default=600.0, min=10.0, max=86400.0,
                 help='Lifetime in seconds of a read-only ticket (POST '
                      '/volumes/{ref}/tickets): what lets a client without '
                      'the cluster key read a volume, its snapshots and '
                      'its clone parents on the chunk servers.  Such a '
                      'ticket is bound to no lease, so nothing revokes it '
                      'before it expires: shorter limits how long a '
                      'ticket taken from a host stays usable, longer '
                      'asks the master less often.  The tickets in lease '
                      'replies last as long as the lease (and a minute '
                      'of clock slack) instead.'),
    cfg.IntOpt('default_replicas', default=3, min=1, max=10,
               help='Replication size of new volumes.'),
    cfg.IntOpt('default_min_replicas', default=2, min=1, max=10,
               help='Writes continue while at least this many replicas of a '
                    'chunk remain; below it they wait and fail.'),
    cfg.IntOpt('default_chunk_size', default=64 * 1024 * 1024,
               min=1024 * 1024,
               help='Chunk size in bytes of new volumes (power of two).'),
    cfg.IntOpt('max_volume_size', default=units.Pi,
               min=chunkfile.BLOCK, max=MAX_VOLUME_SIZE_LIMIT,
               help='Largest size in bytes a volume may be created, cloned '
                    'or resized to (default 1 PiB); the REST API refuses '
                    'larger sizes with HTTP 400. Sizes and offsets are '
                    'signed 64-bit numbers in the databases and kernels, '
                    'hence the maximum of 8 EiB less 4 KiB.'),
    cfg.IntOpt('max_list_limit', default=1000, min=1, max=100000,
               help='Most items one page of a listing holds (GET '
                    '/v1/volumes, /v1/snapshots): a larger "limit" is '
                    'lowered to it, and a listing asked for without a '
                    'limit gets this many at most, with a link to the next '
                    'page ("volumes_links", "snapshots_links"), as with '
                    'Cinder\'s osapi_max_limit. See legacy_full_listings '
                    'for clients older than this release.'),
    cfg.BoolOpt('legacy_full_listings', default=True,
                help='Whether a listing asked for with none of the paging '
                     'and filter parameters (limit, marker, sort_dir, '
                     'name_prefix, name_contains, status) returns every '
                     'item in one answer, as releases before paginated '
                     'listings did, so that the Cinder driver, gateways '
                     'and ursa CLIs not yet upgraded keep seeing every '
                     'volume during a rolling upgrade (masters first). '
                     'Clients of this release always send a limit. Each '
                     'client still asking for a full listing is logged '
                     'once, as a warning. Set it to false once every '
                     'client is upgraded: such requests then get '
                     'max_list_limit items and a link to the next page; '
                     'the default becomes false in the next release.'),
    cfg.StrOpt('coordination_url',
               help='tooz backend URL through which several ursa-master '
                    'processes over one database elect their leader (tooz '
                    'group membership with member expiry), for example '
                    'redis://host:6379, etcd3+http://host:2379, '
                    'zookeeper://host:2181 or memcached://host:11211; every '
                    'master of a cluster must use the same. Default: '
                    'file://<state_dir>/coordination, enough for one '
                    'master, or for several on one host given the same '
                    'file:// path.'),
    # A SIGKILLed leader is replaced after about leader_lease seconds (its
    # membership expires leader_lease after its last heartbeat, sent every
    # leader_renew_deadline / 4, then a standby's round notices within
    # leader_renew_deadline / 4): 8 and 5 measured a median of 7.9 s (max
    # 8.6 s) over 10 runs of tools/bench-failover, 15 and 10 before 14.7 s
    # (doc/source/install.rst).  The deadline stays 3 s short of the
    # lease: a leader has stopped acting well before a standby may take
    # over.
    cfg.IntOpt('leader_lease', default=8, min=1, max=3600,
               help='Seconds a master that stops renewing keeps its place '
                    'in the coordination group (the tooz member timeout): '
                    'a standby takes over from a silent (killed, frozen, '
                    'cut off) leader after about this long; a leader '
                    'stopped with SIGTERM hands over at once. Added to the '
                    'coordination_url as the backend\'s member timeout '
                    'option, unless the URL sets it: membership_timeout on '
                    'redis, etcd3 and memcached, timeout (the session '
                    'timeout) on zookeeper, timeout on file.'),
    cfg.FloatOpt('leader_renew_deadline', default=5.0, min=0.1,
                 help='Seconds after its last renewal a leader steps down '
                      'by itself (stops its background work and refuses '
                      'writes); must be shorter than leader_lease, by a '
                      'few seconds. Masters renew (the leader) or look '
                      'for a leader to replace (standbys) every quarter '
                      'of it.'),
    cfg.StrOpt('advertise_url',
               help='URL of this master\'s REST API as other masters, chunk '
                    'servers and clients reach it; a standby names the '
                    'leader by it. Default: http://<bind_host>:<port> '
                    '(https:// with tls_cert_file).'),
    cfg.BoolOpt('accept_legacy_signatures', default=True,
                help='Whether requests signed the way releases before this '
                     'one did (X-Ursa-Auth v1: time, method and path only; '
                     'the body and the query unsigned, replayable within '
                     'signature_window) are accepted, so that chunk '
                     'servers, gateways, the Cinder driver and nova_ha not '
                     'yet upgraded keep working during a rolling upgrade '
                     '(masters first). Each client still signing v1 is '
                     'logged once, as a warning. Set it to false once every '
                     'client is upgraded; the default becomes false in the '
                     'next release.'),
    cfg.ListOpt('signature_names', default=[],
                help='Other names clients reach this master under (a DNS '
                     'alias, a load balancer), as host[:port] the way '
                     'their URLs write it (no port: 80, or 443 with TLS), '
                     'besides advertise_url and bind_host with the port '
                     '(every name and address of this host when bind_host '
                     'is a wildcard): a request is signed for the master '
                     'it is sent to (the URL\'s host and port) and refused '
                     'by any other, so that a request captured on its way '
                     'to one master cannot be replayed to another. Clients '
                     'reaching this master under a name not known get 401 '
                     '"signed for the master at ..."; the master logs the '
                     'names it accepts at start.'),
    cfg.IntOpt('signature_window', default=60, min=5, max=300,
               help='Seconds a request signature\'s time may be before or '
                    'after this master\'s clock (keep the clocks in sync '
                    'with NTP). The master remembers the nonce of every '
                    'request it accepted for this long after its time, '
                    'and refuses it a second time.'),
    cfg.IntOpt('signature_replay_cache', default=100000, min=1000,
               help='Nonces of accepted requests the master remembers at '
                    'most (about 200 bytes each). When that many '
                    'unexpired ones are held, further requests are refused '
                    'with HTTP 503 (clients retry) until the oldest '
                    'expire, rather than a nonce forgotten early: the '
                    'default holds about 800 requests per second.'),
    cfg.StrOpt('tls_cert_file',
               help='PEM certificate (chain) of this master: set it and '
                    'tls_key_file to serve the REST API over HTTPS only. '
                    'Clients then use https:// master_url and verify it '
                    'with [ursa] tls_ca_file. The certificate must name '
                    'the host of the master_url clients use '
                    '(subjectAltName).'),
    cfg.StrOpt('tls_key_file',
               help='PEM private key of tls_cert_file (unless that file '
                    'holds it).'),
    cfg.StrOpt('tls_ca_file',
               help='PEM CA bundle: when set (with tls_cert_file), every '
                    'client must present a certificate signed by one of '
                    'these CAs (mutual TLS; [ursa] tls_cert_file and '
                    'tls_key_file on the clients).'),
    cfg.FloatOpt('http_header_timeout', default=10.0, min=0.1,
                 help='Seconds a new connection has, from its accept, to '
                      'complete its TLS handshake and send the headers of '
                      'its first request; a connection that has not is '
                      'closed.'),
    cfg.FloatOpt('http_body_timeout', default=30.0, min=0.1,
                 help='Seconds an authenticated request has to send its '
                      'body (at most 4 MiB, or registration_max_body); '
                      'past that it is answered HTTP 408 and its '
                      'connection closed.'),
    cfg.IntOpt('registration_max_body', default=256, min=4,
               help='MiB a chunk server\'s registration may send, once its '
                    'signature is checked: it lists every replica the '
                    'server holds, about 10 bytes each (256 MiB: some 25 '
                    'million replicas). Every other request is limited '
                    'to 4 MiB.'),
    cfg.FloatOpt('http_idle_timeout', default=60.0, min=1.0,
                 help='Seconds an idle keep-alive connection is kept open '
                      'after its last reply (clients close theirs after 15 '
                      's).'),
    cfg.IntOpt('max_connections', default=512, min=8,
               help='Client connections the REST API keeps open at once, '
                    'counted from their accept (TLS handshakes not over '
                    'included). At the limit, a new connection first '
                    'closes the oldest one that has not sent a signed '
                    'request yet; if every connection has, the new one is '
                    'closed (answered HTTP 503 without TLS). Keep it well '
                    'below the open file limit of ursa-master '
                    '(LimitNOFILE).'),
    cfg.FloatOpt('slow_disk_period', default=60.0, min=1.0,
                 help='Seconds a chunk server\'s disk latency must stay far '
                      'above its peers\' (see slow_disk_factor) before it '
                      'is flagged slow, and below half that before the '
                      'flag clears. Reads prefer other replicas over a '
                      'slow server\'s, and the cluster health is a '
                      'warning. The chunk servers report the latency of '
                      'their last third of this period.'),
    cfg.FloatOpt('slow_disk_factor', default=4.0, min=2.0,
                 help='A chunk server is slow when the 99th percentile of '
                      'its disk\'s read, write or sync latency is above '
                      'this many times the median of the other servers\' '
                      '(and above slow_disk_min_latency), at least 3 '
                      'servers reporting.'),
    cfg.FloatOpt('slow_disk_min_latency', default=0.020, min=0.0,
                 help='Seconds of disk latency (99th percentile) below '
                      'which a chunk server is never flagged slow, however '
                      'fast its peers are: a fast, idle cluster flags no '
                      'noise.'),
    cfg.IntOpt('slow_disk_min_samples', default=20, min=1,
               help='Operations of a kind (read, write, sync) a chunk '
                    'server must report for that kind\'s latency to be '
                    'compared.'),
] + metrics.metrics_opts('master')


def register_opts(conf):
    conf.register_group(master_group)
    conf.register_opts(master_opts, group=master_group)


def list_opts():
    return [(master_group, master_opts)]

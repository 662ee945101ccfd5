"""Options every Ursa service and the CLI share, in the ``[ursa]`` group."""

from oslo_config import cfg

ursa_group = cfg.OptGroup('ursa', title='Ursa cluster',
                          help='Options every Ursa process shares.')

common_opts = [
    cfg.StrOpt('cluster_key_file',
               help='File holding the cluster key that authenticates every '
                    'REST request and data connection. ursa-aio writes one '
                    'to <data-dir>/cluster.key.'),
    cfg.StrOpt('cluster_key', secret=True,
               help='The cluster key itself, instead of cluster_key_file.'),
    cfg.ListOpt('accepted_cluster_key_files', default=[],
                help='Files of other cluster keys this process accepts from '
                     'its peers (REST signatures as admin, data '
                     'connections, tickets) while it uses cluster_key_file '
                     'itself: how the cluster key is rotated without '
                     'downtime (see the security guide, "Rotating the '
                     'cluster key").'),
    cfg.StrOpt('principal', default='admin',
               help='The principal this process signs its REST requests '
                    'to the masters as: "admin" signs with the cluster '
                    'key (every right); another is one "ursa key create '
                    'NAME --role ROLE" made, with only its role\'s rights '
                    '(chunkserver, volume, host, nova_ha), and needs '
                    'principal_key_file. Without a cluster key, the data '
                    'protocol then uses the tickets the master issues for '
                    'each volume.'),
    cfg.StrOpt('principal_key_file',
               help='File holding the key of principal (written by "ursa '
                    'key create" or "ursa key rotate", mode 0600).'),
    cfg.ListOpt('master_url', default=['http://127.0.0.1:9380'],
                help='URL(s) of the ursa-master REST API: list every '
                     'master. Calls go to the leader (a standby names it; '
                     'during an election they are retried for up to 30 s).'),
    cfg.FloatOpt('request_timeout', default=15.0, min=1.0,
                 help='Seconds ursa-nbd and ursa-attach wait for a chunk '
                      'server to answer one request before they read '
                      'another replica, or report a primary failed and '
                      'write through the next one. It bounds the stall a '
                      'guest sees when a chunk server hangs (SIGSTOP, a '
                      'stuck disk, a lost network link without a reset). '
                      'Lower means shorter stalls but more healthy '
                      'primaries dropped under load (each then costs a '
                      'copy of its chunks): keep it above twice '
                      '[ursa_chunkserver] replication_timeout, the time a '
                      'primary may take to drop a hung replica and answer.'),
    cfg.FloatOpt('liveness_timeout', default=3.0, min=0.0,
                 help='Seconds a chunk server may leave a connection with '
                      'requests pending silent, not even answering a '
                      'ping, before the connection is given up as hung: '
                      'ursa-nbd and ursa-attach then read another replica '
                      'or report the primary failed, and a primary drops a '
                      'hung replica. A ping is answered at once by a server '
                      'whose requests are merely slow (a busy disk), so '
                      'this catches hung servers (SIGSTOP, a lost link) '
                      'long before request_timeout and '
                      'replication_timeout, which still bound slow ones. '
                      'Lower means shorter stalls when a server hangs, but '
                      'a server whose event loop is held up that long by '
                      'an overloaded host is taken for hung (each false '
                      'alarm costs a catch-up copy). 0 turns it off.'),
    cfg.StrOpt('tls_ca_file',
               help='PEM bundle of the CA(s) that signed the masters\' '
                    'certificates: https:// master_url are verified '
                    'against it (and the host name in the URL). Default: '
                    'the system\'s CAs. See [ursa_master] tls_cert_file.'),
    cfg.StrOpt('tls_cert_file',
               help='PEM client certificate presented to masters that '
                    'require one ([ursa_master] tls_ca_file set: mutual '
                    'TLS); with tls_key_file, unless the file holds the '
                    'key too.'),
    cfg.StrOpt('tls_key_file',
               help='PEM private key of tls_cert_file.'),
    cfg.BoolOpt('data_tls', default=False,
                help='Connect to the chunk servers over TLS (their '
                     '[ursa_chunkserver] tls_cert_file), verifying them with '
                     'tls_ca_file and presenting tls_cert_file to those that '
                     'ask for client certificates: data and its integrity '
                     'protected on networks that are not trusted. Every '
                     'process that reaches chunk servers needs it (chunk '
                     'servers, masters, gateways, the CLI) once they listen '
                     'with TLS.'),
]


def fresh_group(group):
    """A new OptGroup like ``group``: ConfigOpts.register_group keeps a
    shallow copy, whose options dict (and so every override made on one
    ConfigOpts) would be shared with every other ConfigOpts of the process
    that registered the same module-level group."""
    return cfg.OptGroup(group.name, title=group.title, help=group.help)


def register_opts(conf):
    conf.register_group(fresh_group(ursa_group))
    conf.register_opts(common_opts, group=ursa_group.name)


def list_opts():
    return [(ursa_group, common_opts)]

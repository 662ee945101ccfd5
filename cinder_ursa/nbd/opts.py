"""Options of ursa-nbd, in the ``[ursa_nbd]`` group."""

from oslo_config import cfg

nbd_group = cfg.OptGroup('ursa_nbd', title='Ursa NBD gateway',
                         help='Options of the ursa-nbd gateway.')

nbd_opts = [
    cfg.HostAddressOpt('bind_host', default='127.0.0.1',
                       help='Address the NBD server listens on.'),
    cfg.PortOpt('bind_port', default=10809,
                help='TCP port of the NBD server (10809 is the NBD '
                     'standard); 0 picks a free port.'),
    cfg.StrOpt('unix_socket',
               help='Also listen on this unix socket path.'),
    cfg.BoolOpt('read_only', default=False,
                help='Export every volume read-only; no write lease is '
                     'taken.'),
    cfg.StrOpt('state_dir', default='/var/lib/ursa/nbd',
               help='Directory for the endpoint file.'),
    cfg.StrOpt('tls', default='off', choices=['off', 'optional', 'required'],
               help='TLS (NBD_OPT_STARTTLS with x509 certificates, as '
                    'QEMU\'s tls-creds-x509 and libnbd\'s nbds:// expect): '
                    'off; optional (clients choose); required (clients '
                    'that do not start TLS get NBD_REP_ERR_TLS_REQD).'),
    cfg.StrOpt('tls_cert_file',
               help='PEM server certificate (with its chain) for TLS.'),
    cfg.StrOpt('tls_key_file', help='PEM private key of tls_cert_file.'),
    cfg.StrOpt('tls_ca_file',
               help='PEM CA bundle: when set, clients must present a '
                    'certificate signed by it.'),
    cfg.ListOpt('local_chunkserver_dirs', default=[],
                help='data_dir of each chunk server on this host.  The '
                     'gateway then reads the replicas they keep straight '
                     'from their files (verified block by block, falling '
                     'back to the chunk server on any doubt), for volumes '
                     'it is the only writer of: one network hop less per '
                     'read.  Empty: every read goes through a chunk '
                     'server.'),
]


def register_opts(conf):
    conf.register_group(nbd_group)
    conf.register_opts(nbd_opts, group=nbd_group)


def list_opts():
    return [(nbd_group, nbd_opts)]

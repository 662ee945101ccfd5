"""Options of ursa-nbd, in the ``[ursa_nbd]`` group."""

from oslo_config import cfg

from cinder_ursa.transport import metrics

nbd_group = cfg.OptGroup('ursa_nbd', title='Ursa NBD gateway',
                         help='Options of the ursa-nbd gateway.')

nbd_opts = [
    cfg.HostAddressOpt('bind_host', default='127.0.0.1',
                       help='Address the NBD server listens on.'),
    cfg.PortOpt('bind_port', default=10809,
                help='TCP port of the NBD server (10809 is the NBD '
                     'standard); 0 picks a free port.'),
    cfg.StrOpt('unix_socket',
               help='Also listen on this unix socket path.  It is created '
                    'with mode 0600 (only ursa-nbd\'s user may connect), '
                    'or 0660 with unix_socket_group.'),
    cfg.StrOpt('unix_socket_group',
               help='Group given access to unix_socket (mode 0660), e.g. '
                    'the group QEMU runs as.  Unset: mode 0600.'),
    cfg.BoolOpt('allow_insecure_network', default=False,
                help='Let bind_host be an address other than loopback '
                     'without tls = required and tls_ca_file (client '
                     'certificates).  NBD has no other authentication: '
                     'anyone who reaches the port could read and write '
                     'the volumes it may open.  Without this, ursa-nbd '
                     'refuses to start on such an address.'),
    cfg.BoolOpt('require_attachment', default=True,
                help='Open (and describe with NBD_OPT_INFO) only volumes '
                     'the master records as attached to this host '
                     '([ursa_attach] host), and snapshots of those.  A '
                     'client on TCP without a verified TLS client '
                     'certificate must name the attachment\'s export '
                     'token too: VOLUME~TOKEN (the Cinder driver\'s '
                     'nbd_export; "ursa attachment list"), since every '
                     'local user shares 127.0.0.1; on unix_socket and to '
                     'a client certificate the plain name is enough.  An '
                     'export that may not be opened gets the same reply '
                     'as a volume that does not exist.  Open sessions '
                     'end once the volume is no longer attached to this '
                     'host (see recheck_interval).'),
    cfg.FloatOpt('recheck_interval', default=5.0, min=0.1,
                 help='Seconds between two checks, with the master, that '
                      'the volume of an open NBD session is still attached '
                      'to this host (with require_attachment).  A session '
                      'whose volume was detached, or whose host was '
                      'fenced, ends at the next check.'),
    cfg.BoolOpt('list_exports', default=False,
                help='Answer NBD_OPT_LIST (nbdinfo --list, qemu-nbd -L). '
                     'Off: the client gets NBD_REP_ERR_POLICY.  On: the '
                     'names of the volumes that may be opened (with '
                     'require_attachment, those attached to this host).'),
    cfg.FloatOpt('handshake_timeout', default=10.0, min=0.1,
                 help='Seconds a client has to finish the handshake '
                      '(option haggling, TLS, and the gateway\'s lookups '
                      'with the master) after it connects.  A client still '
                      'negotiating then is disconnected.  A handshake may '
                      'also ask for at most 8 exports (INFO, GO, LIST).'),
    cfg.IntOpt('max_connections', default=256, min=1,
               help='Connections served at once (handshaking or '
                    'transmitting).  At the cap, a new connection evicts '
                    'the oldest one still handshaking; when every one is '
                    'transmitting, the new one is closed at once and a '
                    'warning is logged.'),
    cfg.IntOpt('inflight_mib', default=256, min=4,
               help='MiB of request data (READ and WRITE lengths, and '
                    'WRITE_ZEROES and TRIM up to 4 MiB each) in flight '
                    'across all connections.  A connection takes at most a '
                    'quarter of it; past either limit, the gateway stops '
                    'reading requests until some complete.'),
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
                    'certificate signed by it.  Without it TLS encrypts '
                    'but authenticates no client.'),
    cfg.ListOpt('tls_client_names', default=[],
                help='Names a client certificate must carry (its subject '
                     'CN or a DNS subjectAltName) for its holder to open '
                     'attached volumes by their plain names; other '
                     'certificates of the CA still open them under their '
                     'export tokens.  Default: this host ([ursa_attach] '
                     'host), so a certificate issued to another hypervisor '
                     'opens nothing here.  "*": any certificate of the '
                     'CA.'),
    cfg.ListOpt('local_chunkserver_dirs', default=[],
                help='data_dir of each chunk server on this host.  The '
                     'gateway then reads the replicas they keep straight '
                     'from their files (verified block by block, falling '
                     'back to the chunk server on any doubt), for volumes '
                     'it is the only writer of: one network hop less per '
                     'read.  Empty: every read goes through a chunk '
                     'server.'),
] + metrics.metrics_opts('NBD gateway')


def register_opts(conf):
    conf.register_group(nbd_group)
    conf.register_opts(nbd_opts, group=nbd_group)


def list_opts():
    return [(nbd_group, nbd_opts)]

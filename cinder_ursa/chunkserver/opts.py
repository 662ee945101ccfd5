"""Options of ursa-chunkserver, in the ``[ursa_chunkserver]`` group."""

import socket

from oslo_config import cfg

from cinder_ursa.transport import metrics

chunkserver_group = cfg.OptGroup(
    'ursa_chunkserver', title='Ursa chunk server',
    help='Options of the ursa-chunkserver service (one per data directory).')

chunkserver_opts = [
    cfg.StrOpt('data_dir', default='/var/lib/ursa/chunks',
               help='Directory holding this server\'s chunk replicas.'),
    cfg.HostAddressOpt('bind_host', default='127.0.0.1',
                       help='Address the data protocol listens on.'),
    cfg.PortOpt('bind_port', default=9400,
                help='Port of the data protocol; 0 picks a free port.'),
    cfg.HostAddressOpt('advertise_host',
                       help='Address clients and peers use to reach this '
                            'server. Default: bind_host.'),
    cfg.StrOpt('host', default=socket.gethostname(),
               sample_default='<hostname>',
               help='Host name declared to the master, the failure domain '
                    'at level "host".'),
    cfg.StrOpt('rack', default='default',
               help='Rack declared to the master, the failure domain at '
                    'level "rack".'),
    cfg.FloatOpt('replication_timeout', default=5.0, min=0.1,
                 help='Seconds a primary waits for a replica to apply a '
                      'write before it asks the master to drop that replica.'),
    cfg.FloatOpt('recovery_rate_min', default=32.0, min=0,
                 help='MiB/s this server sends to bring other copies up to '
                      'date (re-replication, catch-up, resync) while '
                      'clients use it: recovery still progresses under '
                      'full client load. 0: no limit.'),
    cfg.FloatOpt('recovery_rate_max', default=0.0, min=0,
                 help='MiB/s this server sends to bring other copies up to '
                      'date while no client uses it. 0: no limit.'),
    cfg.IntOpt('reserved_bytes', default=64 * 1024 * 1024, min=0,
               help='Free space kept back on the data filesystem; writes '
                    'that would eat into it fail with "no space".'),
    cfg.IntOpt('disk_error_limit', default=5, min=0,
               help='Disk I/O errors (EIO, a filesystem gone read-only, a '
                    'device gone; not "no space") within disk_error_window '
                    'seconds after which this server declares its data '
                    'directory failed: it serves nothing from it, the '
                    'master re-replicates its chunks at once, and only a '
                    'restart clears it. A failed fdatasync counts as one '
                    'error. 0: never.'),
    cfg.FloatOpt('disk_error_window', default=60.0, min=1.0,
                 help='Seconds over which disk_error_limit errors are '
                      'counted.'),
    cfg.IntOpt('scrub_interval', default=7 * 24 * 3600, min=0,
               help='Seconds over which the deep scrub reads every block '
                    'of every replica this server holds (head and '
                    'snapshot layers) and checks its CRC, repairing bad '
                    'blocks from a valid replica. A pass is spread over '
                    'the interval (each a little shorter, at random, so '
                    'servers do not align), goes faster while no client '
                    'uses this server and waits while clients do, unless '
                    'it is behind. 0: no deep scrub.'),
    cfg.IntOpt('light_scrub_interval', default=24 * 3600, min=0,
               help='Seconds over which the light scrub compares, for each '
                    'chunk this server is the primary of, the epoch, '
                    'length and block checksums of every replica (no data '
                    'read), and repairs the blocks that differ. 0: no '
                    'light scrub.'),
    cfg.IntOpt('scrub_error_limit', default=16, min=0,
               help='Bad blocks the deep scrub may find on this data '
                    'directory in one pass; one more fails the directory '
                    '(a dying disk, not rot): it serves nothing, and the '
                    'master re-replicates its chunks from their other '
                    'copies. 0: never.'),
    cfg.FloatOpt('auth_timeout', default=10.0, min=0,
                 help='Seconds a connection to the data protocol has to '
                      'authenticate with the cluster key; it is closed '
                      'after. 0: no deadline (not advised: a peer that '
                      'never authenticates then holds its connection for '
                      'good).'),
    cfg.FloatOpt('idle_timeout', default=600.0, min=0,
                 help='Seconds after which an authenticated connection '
                      'with nothing received and nothing pending in '
                      'either direction is closed. Its client is told '
                      'first and opens a new connection for its next '
                      'request, without an error. 0: never.'),
    cfg.IntOpt('max_connections', default=4096, min=0,
               help='Connections this server keeps open at most (clients, '
                    'other chunk servers, the master); one more is '
                    'answered "unavailable" and closed. Keep it below the '
                    'process\'s open files limit (LimitNOFILE). 0: no '
                    'limit.'),
    cfg.IntOpt('max_unauthenticated', default=256, min=0,
               help='Connections not yet authenticated this server keeps '
                    'at most; one more evicts the oldest of them (a '
                    'stranger cannot lock out a key holder, who '
                    'authenticates in one round trip). 0: no limit.'),
    cfg.IntOpt('max_unauthenticated_per_host', default=64, min=0,
               help='Connections not yet authenticated from one source '
                    'address this server keeps at most; one more evicts '
                    'the oldest of them from that address. 0: no limit.'),
    cfg.StrOpt('tls_cert_file',
               help='PEM certificate (with its chain) of this server: with '
                    'tls_key_file, the data protocol is served over TLS '
                    'only, and every process that reaches this server needs '
                    '[ursa] data_tls = true. The certificate must name the '
                    'address clients connect to (advertise_host) in its '
                    'subjectAltName.'),
    cfg.StrOpt('tls_key_file',
               help='PEM private key of tls_cert_file (unless that file '
                    'holds it).'),
    cfg.StrOpt('tls_ca_file',
               help='PEM CA bundle: when set (with tls_cert_file), peers '
                    'must present a certificate signed by these CAs '
                    '(mutual TLS: [ursa] tls_cert_file and tls_key_file on '
                    'every client).'),
    cfg.FloatOpt('smart_interval', default=600.0, min=0,
                 help='Seconds between two reads of the SMART data of the '
                      'disk under data_dir (smartctl from smartmontools '
                      '7.0 or later), exported as the '
                      'ursa_chunkserver_smart_* metrics: health, wear of '
                      'an SSD, temperature, error counts. 0: none.'),
    cfg.StrOpt('smart_device',
               help='Disk whose SMART data is read (e.g. /dev/sda, '
                    '/dev/nvme0). Default: the disk holding data_dir\'s '
                    'filesystem; none when that is a logical or virtual '
                    'device (LVM, md RAID, loop, virtio) or no block '
                    'device (tmpfs, overlay, NFS).'),
    cfg.StrOpt('smart_device_type',
               help='The device type smartctl is given with -d for '
                    'smart_device (e.g. sat for a disk behind a USB '
                    'bridge, nvme, megaraid,0 for a disk behind a MegaRAID '
                    'controller). Default: smartctl detects it.'),
    cfg.StrOpt('smartctl_path', default='smartctl',
               help='The smartctl program (a name looked up in PATH, or a '
                    'path, e.g. a wrapper running it with sudo when this '
                    'server\'s user may not open the disk).'),
] + metrics.metrics_opts('chunk server')


def register_opts(conf):
    conf.register_group(chunkserver_group)
    conf.register_opts(chunkserver_opts, group=chunkserver_group)


def list_opts():
    return [(chunkserver_group, chunkserver_opts)]

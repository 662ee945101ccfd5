"""The driver's options (a cinder.conf backend section): ``ursa_opts``,
appended by :class:`~cinder_ursa.volume.driver.UrsaDriver` to its
configuration, and ``list_opts()`` for oslo-config-generator, which
needs no cinder package."""

from oslo_config import cfg

ursa_opts = [
    cfg.ListOpt('ursa_master_urls', default=['http://127.0.0.1:9380'],
                help='URL(s) of the ursa-master REST API: list every '
                     'master. Calls go to the leader (a standby names it; '
                     'during an election they are retried for up to 30 s).'),
    cfg.StrOpt('ursa_cluster_key_file', default='/etc/ursa/cluster.key',
               help='File holding the Ursa cluster key (readable by the '
                    'cinder user). Empty, with ursa_principal: the driver '
                    'holds no cluster key, and image copies reach the '
                    'chunk servers with the tickets the master issues for '
                    'each volume.'),
    cfg.StrOpt('ursa_principal', default='admin',
               help='The Ursa principal the driver signs its requests to '
                    'the masters as: "admin" signs with the cluster key '
                    '(every right); better, one made with "ursa key create '
                    'NAME --role volume" (volumes, snapshots, clones, '
                    'attachments only), with ursa_principal_key_file. '
                    'Image copies read and write chunk servers with the '
                    'cluster key, or with tickets (ursa_cluster_key_file '
                    'empty).'),
    cfg.StrOpt('ursa_principal_key_file',
               help='File holding the key of ursa_principal (readable by '
                    'the cinder user).'),
    cfg.StrOpt('ursa_tls_ca_file',
               help='PEM CA bundle verifying https:// ursa_master_urls '
                    '(the masters\' [ursa_master] tls_cert_file). Default: '
                    'the system\'s CAs.'),
    cfg.StrOpt('ursa_tls_cert_file',
               help='PEM client certificate for masters that require one '
                    '(mutual TLS: [ursa_master] tls_ca_file).'),
    cfg.StrOpt('ursa_tls_key_file',
               help='PEM private key of ursa_tls_cert_file.'),
    cfg.BoolOpt('ursa_data_tls', default=False,
                help='Image copies reach the chunk servers over TLS (their '
                     '[ursa_chunkserver] tls_cert_file), verified with '
                     'ursa_tls_ca_file, presenting ursa_tls_cert_file when '
                     'asked. It applies to the whole cinder-volume process '
                     '(every Ursa backend in it).'),
    cfg.IntOpt('ursa_replicas', default=3, min=1, max=10,
               help='Replicas of every chunk of new volumes.'),
    cfg.IntOpt('ursa_min_replicas', default=2, min=1, max=10,
               help='Replicas that must remain for writes to go on.'),
    cfg.IntOpt('ursa_chunk_size_mib', default=64, min=1, max=1024,
               help='Chunk size of new volumes, in MiB.'),
    cfg.IntOpt('ursa_stripe_unit_kib', default=0, min=0,
               help='Stripe unit of new volumes in KiB (0: no striping, '
                    'the stripe unit is the chunk).'),
    cfg.IntOpt('ursa_stripe_count', default=1, min=1, max=64,
               help='Chunks a stripe spans (with ursa_stripe_unit_kib).'),
    cfg.IntOpt('ursa_max_clone_depth', default=5, min=0,
               help='A new clone whose parent chain would be deeper than '
                    'this is flattened (copied) when it is created; 0 '
                    'flattens every clone.'),
    cfg.BoolOpt('ursa_flatten_volume_from_snapshot', default=False,
                help='Flatten every volume created from a snapshot or a '
                     'volume, so it never depends on its source.'),
    cfg.IntOpt('ursa_flatten_rate_mib', default=0, min=0,
               help='Limit of flatten copies in MiB/s (0: no limit).'),
    cfg.BoolOpt('ursa_image_cache', default=True,
                help='Keep every image a volume was created from as a '
                     'read-only Ursa volume (image-<image id>) and create '
                     'later volumes from the same image as O(1) clones of '
                     'it (clone_image).'),
    cfg.FloatOpt('ursa_attach_timeout', default=60.0, min=1.0,
                 help='Seconds ursa-attach on the connector\'s host has to '
                      'expose (or release) an attached volume.'),
    cfg.HostAddressOpt('ursa_nbd_host', default='127.0.0.1',
                       help='Where hypervisors reach ursa-nbd, for the '
                            'NBD details of the connection info (libvirt '
                            'network disks); 127.0.0.1: the gateway on the '
                            'hypervisor itself.'),
    cfg.PortOpt('ursa_nbd_port', default=10809,
                help='Port of ursa-nbd for the connection info.'),
    cfg.FloatOpt('ursa_timeout', default=60.0, min=1.0,
                 help='Timeout of one request to the Ursa master, in '
                      'seconds.'),
]



def list_opts():
    return [('ursa', ursa_opts)]

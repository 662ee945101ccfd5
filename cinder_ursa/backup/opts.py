"""The backup driver's options ([DEFAULT] of cinder-backup's cinder.conf,
as Cinder's own backup drivers keep theirs), and ``list_opts()`` for
oslo-config-generator."""

from oslo_config import cfg

backup_opts = [
    cfg.ListOpt('backup_ursa_master_urls',
                default=['http://127.0.0.1:9380'],
                help='URL(s) of the ursa-master REST API of the Ursa '
                     'cluster that keeps the backups: a second cluster, '
                     'or the volumes\' own (backups are then volumes of '
                     'their own in it, named volume-<id>.backups).'),
    cfg.StrOpt('backup_ursa_cluster_key_file',
               default='/etc/ursa/cluster.key',
               help='File holding the cluster key of the backup cluster '
                    '(readable by the cinder user).'),
    cfg.ListOpt('backup_ursa_source_master_urls', default=[],
                help='URL(s) of the ursa-master of the cluster the volumes '
                     'are on. Empty: the ursa_master_urls of the volume\'s '
                     'backend section in this cinder.conf, as cinder-volume '
                     'reads it; without such a section, the backup '
                     'cluster\'s.'),
    cfg.StrOpt('backup_ursa_source_cluster_key_file',
               help='File holding the cluster key of the volumes\' '
                    'cluster. Empty: as backup_ursa_source_master_urls '
                    'finds it.'),
    cfg.IntOpt('backup_ursa_replicas', default=0, min=0, max=10,
               help='Replicas of the backup volumes; 0: the backup '
                    'cluster\'s default.'),
    cfg.IntOpt('backup_ursa_chunk_size_mib', default=64, min=1, max=1024,
               help='Chunk size of the backup volumes, in MiB.'),
    cfg.FloatOpt('backup_ursa_timeout', default=60.0, min=1.0,
                 help='Seconds an Ursa call may take before the backup '
                      'or restore fails (the data path retries within '
                      'it).'),
]


def list_opts():
    return [('DEFAULT', backup_opts)]

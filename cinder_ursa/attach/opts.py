"""Options of ursa-attach, in the ``[ursa_attach]`` group."""

import socket

from oslo_config import cfg

from cinder_ursa.transport import metrics

attach_group = cfg.OptGroup(
    'ursa_attach', title='Ursa host attach agent',
    help='Options of ursa-attach, which exposes the volumes attached to '
         'this host (Cinder initialize_connection) as files.')

attach_opts = [
    cfg.StrOpt('host', default=socket.gethostname(),
               sample_default='<hostname>',
               help='This host\'s name as Cinder\'s connector reports it '
                    '(nova-compute\'s and cinder-volume\'s [DEFAULT] '
                    'host).'),
    cfg.StrOpt('mount_dir', default='/var/lib/ursa/attach',
               help='Where the FUSE filesystem with one file per attached '
                    'volume is mounted (created if missing).'),
    cfg.StrOpt('state_dir', default='/var/lib/ursa/attach-state',
               help='Directory for the endpoint file.'),
    cfg.StrOpt('owner', default='root',
               help='User (name or number) who owns the volume files: '
                    'the hypervisor\'s QEMU user (libvirt-qemu on Debian '
                    'and Ubuntu, qemu on RHEL) when QEMU opens them. The '
                    'kernel enforces the files\' modes (the mount uses '
                    'default_permissions): only this user, the group '
                    'below and root can open a volume; every other local '
                    'user gets EACCES.'),
    cfg.StrOpt('group',
               help='Group (name or number) whose members may also read '
                    'and write the volume files (mode 0660), e.g. kvm or '
                    'disk. Unset: group root and mode 0600, the owner '
                    'alone.'),
    cfg.FloatOpt('poll_interval', default=1.0, min=0.1,
                 help='Seconds between two looks at this host\'s '
                      'attachments on the master.'),
] + metrics.metrics_opts('attach agent')


def register_opts(conf):
    conf.register_group(attach_group)
    conf.register_opts(attach_opts, group=attach_group)


def list_opts():
    return [(attach_group, attach_opts)]

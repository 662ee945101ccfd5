"""``ursa host show|fence|unfence|fenced``: client hosts and their
fencing."""

from cliff import command
from cliff import lister
from cliff import show

from cinder_ursa.common import units

_when = units.format_time


class HostShow(show.ShowOne):
    """Show what the cluster knows of a client host (a hypervisor or a
    gateway host): its leases and whether it is fenced.
    Example: ursa host show compute-3"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('host', help='Host name, as clients and Nova know it.')
        return p

    def take_action(self, args):
        h = self.app.master().host(args.host)
        info = {'host': h['host'], 'fenced': h['fenced'],
                'fenced_at': _when(h['fenced_at']),
                'fence_reason': h['fence_reason'] or '',
                'live_leases': h['live_leases'],
                'leases': ', '.join('%s (%s)' % (x['volume_name'],
                                                 x['holder'])
                                    for x in h['leases']),
                'attachments': h['attachments']}
        return tuple(info), tuple(info.values())


class HostFence(show.ShowOne):
    """Fence a host: revoke every lease its clients hold (chunk servers
    refuse their writes from that moment), drop its attachments and refuse
    it new leases until it is unfenced.  nova_ha does this before it
    evacuates a failed compute host.  The writers of other hosts sharing
    a multiattach volume with it are re-admitted at the new lease
    generation and write on (writers_readmitted).
    Example: ursa host fence compute-3 --reason 'powered off for repair'"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('host', help='Host name, as clients and Nova know it.')
        p.add_argument('--reason', help='Why, kept with the fence and shown '
                       'by "ursa host fenced".')
        return p

    def take_action(self, args):
        f = self.app.master().fence_host(args.host, args.reason)
        info = {'host': f['host'],
                'leases_revoked': len(f['fenced']),
                'volumes': ', '.join(x['volume_name'] for x in f['fenced']),
                'attachments_dropped': f['attachments_dropped'],
                # (A master older than re-admission lists none.)
                'writers_readmitted': sum(len(x.get('readmitted', ()))
                                          for x in f['fenced'])}
        return tuple(info), tuple(info.values())


class HostUnfence(command.Command):
    """Let a fenced host take leases again (after it was repaired and its
    instances run elsewhere).  Example: ursa host unfence compute-3"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('host', help='Host name, as clients and Nova know it.')
        return p

    def take_action(self, args):
        self.app.master().unfence_host(args.host)
        self.app.stdout.write('Host %s unfenced\n' % args.host)


class HostFencedList(lister.Lister):
    """List fenced hosts.  Example: ursa host fenced"""

    def take_action(self, args):
        return (('host', 'fenced_at', 'reason'),
                [(h['host'], _when(h['fenced_at']), h['reason'] or '')
                 for h in self.app.master().fenced_hosts()])



class AttachmentList(lister.Lister):
    """List attachments: which volume is attached to which host, and the
    NBD export name ursa-nbd on that host serves it under over TCP
    (VOLUME~TOKEN: the attachment's secret export token; a client that
    is not on the gateway's unix socket and has no TLS client
    certificate must name it so).  Whoever holds the cluster key sees
    the tokens: treat this output as a secret.  During a live
    migration the destination's attachment is a ``standby`` (it takes
    the volume's lease over at its first write), and the source's shows
    ``release_requested`` once the destination asked for the lease.
    Example: ursa attachment list --host compute-3"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('--host', help='Only the attachments of this host.')
        p.add_argument('--volume', help='Only those of this volume (name '
                       'or id).')
        return p

    def take_action(self, args):
        rows = []
        for a in self.app.master().attachments(args.volume, args.host):
            token = a.get('export_token')
            rows.append((a['volume_name'], a['host'], a['status'],
                         bool(a.get('standby')),
                         bool(a.get('release_requested')),
                         '%s~%s' % (a['volume_name'], token) if token
                         else a['volume_name'], a.get('path') or ''))
        return ('volume', 'host', 'status', 'standby', 'release_requested',
                'nbd_export', 'path'), rows

"""``ursa snapshot create|list|show|delete``."""

import time

from cliff import command
from cliff import lister
from cliff import show

from cinder_ursa.cmd.admin.volumes import add_paging_arguments
from cinder_ursa.common import units


def _fmt_snapshot(s):
    return {'id': s['id'], 'name': s['name'],
            'volume': s.get('volume_name', s['volume_id']),
            'seq': s['seq'], 'size': s['size'],
            'size_human': units.format_size(s['size']),
            'status': s['status'],
            'created_at': time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(
                s['created_at'])),
            'clones': ', '.join(s.get('clones', []))}


class SnapshotCreate(show.ShowOne):
    """Take a snapshot of a volume (O(1), also while it is being written:
    every write acknowledged before is in it).
    Example: ursa snapshot create vol1 before-upgrade"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('volume', help='Volume name or id.')
        p.add_argument('name', help='Snapshot name, unique per volume: '
                       'up to 255 letters, digits, ".", "_" and "-", first '
                       'a letter, a digit or "_".')
        return p

    def take_action(self, args):
        snap = self.app.master().create_snapshot(args.volume, args.name)
        s = _fmt_snapshot(snap)
        return tuple(s), tuple(s.values())


class SnapshotList(lister.Lister):
    """List snapshots, of every volume or of one, by volume name and
    then age: all of them, asked from the master a page at a time, or
    with --limit one page of them, after --marker (volume@name).
    Example: ursa snapshot list --volume vol1"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('--volume', help='Only this volume\'s snapshots.')
        add_paging_arguments(
            p, 'snapshots', ('creating', 'available'),
            marker_help='Start after this snapshot (volume@name or id): '
                        'the last one of the previous page.',
            order='Volume name and age order', marker_metavar='VOLUME@NAME')
        return p

    def take_action(self, args):
        cols = ('id', 'volume', 'name', 'seq', 'size_human', 'status',
                'created_at')
        filters = dict(descending=args.sort_dir == 'desc',
                       name_prefix=args.name_prefix,
                       name_contains=args.name_contains,
                       status=args.status)
        master = self.app.master()
        if args.limit is None:
            snaps = list(master.iter_snapshots(
                args.volume, marker=args.marker, page_size=args.page_size,
                **filters))
        else:
            snaps, following = master.snapshots_page(
                args.limit, args.marker, args.volume, **filters)
            if following is not None:
                self.app.stderr.write(
                    'More snapshots after %s: ursa snapshot list --marker '
                    '%s --limit %d (with the same filters)\n'
                    % (following, following, args.limit))
        return cols, [tuple(_fmt_snapshot(s)[c] for c in cols)
                      for s in snaps]


class SnapshotShow(show.ShowOne):
    """Show a snapshot: its volume, sequence, size and clones.
    Example: ursa snapshot show vol1@before-upgrade"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('snapshot', help='volume@name or id')
        return p

    def take_action(self, args):
        s = _fmt_snapshot(self.app.master().snapshot(args.snapshot))
        return tuple(s), tuple(s.values())


class SnapshotDelete(command.Command):
    """Delete snapshots.  A snapshot that clones still read is moved to
    the trash (hidden) and freed when its last clone is deleted or
    flattened.  Example: ursa snapshot delete vol1@before-upgrade"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('snapshot', nargs='+', help='volume@name or id')
        return p

    def take_action(self, args):
        for ref in args.snapshot:
            self.app.master().delete_snapshot(ref)
            self.app.stdout.write('Deleted snapshot %s\n' % ref)


"""``ursa volume create|list|show|delete|clone|flatten|resize|revert|
lease-history``: a volume's life cycle at the master."""

import argparse
import time

from cliff import command
from cliff import lister
from cliff import show

from cinder_ursa.cmd.admin.data import progress_bar
from cinder_ursa.common import units
from cinder_ursa.protocol import lease_history
from cinder_ursa.protocol import paging


def _fmt_volume(v):
    lease = v.get('lease') or {}
    return {
        'id': v['id'], 'name': v['name'], 'size': v['size'],
        'size_human': units.format_size(v['size']),
        'replicas': v['replicas'], 'min_replicas': v['min_replicas'],
        'chunk_size': v['chunk_size'], 'stripe_unit': v['stripe_unit'],
        'stripe_count': v['stripe_count'], 'status': v['status'],
        'allocated_chunks': v.get('allocated_chunks', 0),
        'allocated_bytes': v.get('allocated_bytes', 0),
        'allocated_bytes_total': v.get('allocated_bytes_total', 0),
        'snapshots': v.get('snapshots', 0),
        'parent': ('%(volume_name)s@%(snapshot_name)s' % v['parent']
                   if v.get('parent') else ''),
        'lease_holder': lease.get('holder') or '',
        'lease_generation': lease.get('generation', 0),
        # The limits Ursa enforces (Cinder's back-end QoS specs).
        'qos': ', '.join('%s=%s' % kv for kv in sorted(
            (v.get('qos') or {}).items())) or '-',
        'multiattach': bool(v.get('multiattach')),
    }


class VolumeCreate(show.ShowOne):
    """Create a thin volume.  Example: ursa volume create vol1 10G"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('name', help='Volume name (unique): up to 255 '
                       'letters, digits, ".", "_" and "-", first a letter, '
                       'a digit or "_".')
        p.add_argument('size', help='Size, e.g. 10G, 512M (binary units).')
        p.add_argument('--replicas', type=int,
                       help='Copies of every chunk (default: the master\'s '
                       'default_replicas, 3).')
        p.add_argument('--min-replicas', type=int,
                       help='Copies below which writes wait and then fail '
                       '(default: the master\'s default_min_replicas, 2).')
        p.add_argument('--chunk-size', help='e.g. 64M (power of two).')
        p.add_argument('--stripe-unit', help='e.g. 64K (power of two).')
        p.add_argument('--stripe-count', type=int,
                       help='Chunks a stripe spans (default 1: no '
                       'striping).')
        return p

    def take_action(self, args):
        size = units.parse_size(args.size)
        kwargs = dict(replicas=args.replicas, min_replicas=args.min_replicas,
                      stripe_count=args.stripe_count)
        if args.chunk_size:
            kwargs['chunk_size'] = units.parse_size(args.chunk_size)
        if args.stripe_unit:
            kwargs['stripe_unit'] = units.parse_size(args.stripe_unit)
        v = _fmt_volume(self.app.master().create_volume(args.name, size,
                                                        **kwargs))
        return tuple(v), tuple(v.values())


def add_paging_arguments(p, what, statuses, marker_help, order,
                         marker_metavar=None):
    """The options of a paged listing (``ursa volume list``, ``ursa
    snapshot list``): --limit, --marker, the filters, --sort-dir and
    --page-size; ``what``: the plural of the listed items."""
    p.add_argument('--limit', type=positive,
                   help='Show at most LIMIT %s; if there are more, the '
                        'marker to go on from is printed on stderr.' % what)
    p.add_argument('--marker', metavar=marker_metavar, help=marker_help)
    p.add_argument('--name-prefix', metavar='PREFIX',
                   help='Only %s whose name starts with PREFIX (ignoring '
                        'case).' % what)
    p.add_argument('--name-contains', metavar='TEXT',
                   help='Only %s whose name contains TEXT (ignoring case).'
                   % what)
    p.add_argument('--status', action='append', choices=statuses,
                   help='Only %s with this status (repeat it for several).'
                   % what)
    p.add_argument('--sort-dir', choices=('asc', 'desc'), default='asc',
                   help='%s (asc, the default) or its reverse (desc).'
                   % order)
    p.add_argument('--page-size', type=positive,
                   help='%s asked for per request (default %d; the '
                        'master\'s [ursa_master] max_list_limit caps it).'
                   % (what.capitalize(), paging.PAGE_SIZE))


def positive(text):
    """An argparse type: an integer of 1 or more (--limit, --page-size)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError('%r is not an integer' % text) \
            from None
    if n < 1:
        raise argparse.ArgumentTypeError('must be 1 or more, not %d' % n)
    return n


class VolumeList(lister.Lister):
    """List volumes in name order with their size, allocated bytes and
    replicas: every volume, asked from the master a page at a time, or
    with --limit one page of them, after --marker.  --name-prefix,
    --name-contains (ignoring case) and --status filter on the master.
    Example: ursa volume list --name-prefix volume- --status available
    --limit 50 -f json"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        add_paging_arguments(
            p, 'volumes', ('available', 'reverting', 'deleting'),
            marker_help='Start after this volume (name or id): the last '
                        'one of the previous page.',
            order='Name order')
        return p

    def take_action(self, args):
        cols = ('id', 'name', 'size_human', 'replicas', 'allocated_bytes',
                'status', 'lease_holder')
        filters = dict(descending=args.sort_dir == 'desc',
                       name_prefix=args.name_prefix,
                       name_contains=args.name_contains,
                       status=args.status)
        master = self.app.master()
        if args.limit is None:
            vols = list(master.iter_volumes(
                marker=args.marker, page_size=args.page_size, **filters))
        else:
            vols, following = master.volumes_page(args.limit, args.marker,
                                                  **filters)
            if following is not None:
                self.app.stderr.write(
                    'More volumes after %s: ursa volume list --marker %s '
                    '--limit %d (with the same filters)\n'
                    % (following, following, args.limit))
        return cols, [tuple(_fmt_volume(v)[c] for c in cols) for v in vols]


class VolumeShow(show.ShowOne):
    """Show one volume (by name or id): size, allocation, chunk layout,
    snapshots, parent and lease.  Example: ursa volume show vol1"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('volume', help='Volume name or id.')
        return p

    def take_action(self, args):
        v = _fmt_volume(self.app.master().volume(args.volume))
        return tuple(v), tuple(v.values())


class VolumeDelete(command.Command):
    """Delete volumes and free their space on every chunk server.
    Example: ursa volume delete vol1 vol2"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('volume', nargs='+', help='Volume names or ids.')
        return p

    def take_action(self, args):
        for ref in args.volume:
            self.app.master().delete_volume(ref)
            self.app.stdout.write('Deleted volume %s\n' % ref)


class VolumeClone(show.ShowOne):
    """Create a volume from a snapshot in O(1): it reads the snapshot's
    blocks until it writes its own.
    Example: ursa volume clone vol1@golden vm42 --size 20G"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('snapshot', help='volume@name or id')
        p.add_argument('name', help='Name of the new volume: up to 255 '
                       'letters, digits, ".", "_" and "-", first a letter, '
                       'a digit or "_".')
        p.add_argument('--size', help='At least the snapshot\'s size '
                                      '(default: the same).')
        p.add_argument('--replicas', type=int,
                       help='Copies of every chunk (default: the '
                       'master\'s default_replicas, 3).')
        return p

    def take_action(self, args):
        size = units.parse_size(args.size) if args.size else None
        kwargs = {'replicas': args.replicas} if args.replicas else {}
        v = _fmt_volume(self.app.master().clone(args.snapshot, args.name,
                                                size, **kwargs))
        return tuple(v), tuple(v.values())


class VolumeFlatten(show.ShowOne):
    """Copy the blocks a clone still reads from its parent into the clone
    and detach it (works while the clone is in use; rate limited with
    --rate; running it again resumes).
    Example: ursa volume flatten vm42 --rate 100M"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('volume', help='Volume name or id.')
        p.add_argument('--rate', help='Copy at most this many bytes per '
                                      'second (e.g. 100M).')
        return p

    def take_action(self, args):
        rate = units.parse_size(args.rate) if args.rate else None
        with self.app.data_cluster() as cluster:
            bar = progress_bar(None, 'flatten')

            def progress(done, total):
                bar.total = total
                bar.update(done - bar.n)
            try:
                vol = cluster.flatten(args.volume, progress, rate)
            finally:
                bar.close()
        v = _fmt_volume(vol)
        return tuple(v), tuple(v.values())


class VolumeResize(show.ShowOne):
    """Grow a volume (also while in use: NBD clients see the new size when
    they reconnect).  Shrinking destroys the data past the new end and
    needs --force.  Example: ursa volume resize vol1 20G"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('volume', help='Volume name or id.')
        p.add_argument('size', help='New size, e.g. 20G.')
        p.add_argument('--force', action='store_true',
                       help='Allow shrinking.')
        return p

    def take_action(self, args):
        with self.app.data_cluster() as cluster:
            vol = cluster.resize(args.volume, units.parse_size(args.size),
                                 args.force)
        v = _fmt_volume(vol)
        return tuple(v), tuple(v.values())


class VolumeRevert(show.ShowOne):
    """Make a volume's data what it was at one of its snapshots (the volume
    must not be open for writing; later snapshots are kept).
    Example: ursa volume revert vol1 before-upgrade"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('volume', help='Volume name or id.')
        p.add_argument('snapshot', help='snapshot name (or id)')
        return p

    def take_action(self, args):
        vol = self.app.master().revert(args.volume, args.snapshot)
        v = _fmt_volume(vol)
        return tuple(v), tuple(v.values())



def _when_ms(ts):
    """A UNIX time as local 'YYYY-mm-dd HH:MM:SS.mmm': lease events of
    one second (an expire and the acquire that noticed it) stay apart."""
    return '%s.%03d' % (time.strftime('%Y-%m-%d %H:%M:%S',
                                      time.localtime(ts)),
                        int(ts % 1 * 1000))


class VolumeLeaseHistory(lister.Lister):
    """Show a volume's lease history, oldest first: who took its write
    lease (acquire; share for a multiattach volume's writers) and how
    each lease ended (release, leave, revoke, fence, expire, takeover),
    with the generation, when the master recorded it and who asked.
    Renewals are not recorded; the master keeps the newest
    [ursa_master] lease_history_per_volume events.  With --check, it
    also proves from the history that the volume had one writer at a
    time (a multiattach volume: one generation at a time) and exits 1
    naming the events that overlap.
    Example: ursa volume lease-history vol1 --check"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('volume', help='Volume name or id.')
        p.add_argument('--limit', type=int,
                       help='Show only the newest LIMIT events.')
        p.add_argument('--check', action='store_true',
                       help='Check that no two writers held the volume at '
                            'once (events in order, generations never going '
                            'down, every lease ended before the next one '
                            'began); exit 1 if not, naming the events.')
        return p

    def take_action(self, args):
        master = self.app.master()
        events = master.lease_history(args.volume, args.limit)
        self.problems = []
        if args.check:
            multiattach = master.volume(args.volume)['multiattach']
            self.problems = lease_history.check(events,
                                                shared_ok=multiattach)
            gens = len({e['generation'] for e in events
                        if e['event'] in lease_history.STARTS})
            if self.problems:
                self.app.stderr.write(
                    'lease history of %s: %d problem(s) in %d event(s)\n'
                    % (args.volume, len(self.problems), len(events)))
                for p in self.problems:
                    self.app.stderr.write('  event #%s%s: %s\n' % (
                        p.event, ' (and #%s)' % p.since
                        if p.since is not None else '', p.problem))
            else:
                self.app.stderr.write(
                    'lease history of %s: %d event(s), %d generation(s) '
                    'taken, one %s at a time\n' % (
                        args.volume, len(events), gens,
                        'generation' if multiattach else 'writer'))
        cols = ('id', 'at', 'event', 'generation', 'holder', 'by', 'reason')
        return cols, [(e['id'], _when_ms(e['at']), e['event'],
                       e['generation'], e['holder'] or '', e['by'],
                       e['reason'] or '') for e in events]

    def run(self, parsed_args):
        rc = super().run(parsed_args)
        return rc or (1 if self.problems else 0)

"""``ursa volume diff | export-diff | import-diff``: what changed in a
volume between two of its states, listed, or sent as a stream (see
cinder_ursa.client.diffstream for its format) that another volume, on
this cluster or another, takes in."""

import contextlib
import signal
import sys

from cliff import command
from cliff import lister

from cinder_ursa import exception
from cinder_ursa.client import diff as diff_mod
from cinder_ursa.client import diffstream
from cinder_ursa.cmd.admin.data import progress_bar
from cinder_ursa.common import units


def _refs(args):
    """(newer ref, older snapshot or None) from ``ref [ref]`` and
    ``--from-snap``: ``vol@a vol@b`` or ``vol@a vol`` is the same as
    ``--from-snap a vol@b`` or ``--from-snap a vol``."""
    refs = args.refs
    older = args.from_snap
    if len(refs) == 2:
        if older is not None:
            raise exception.InvalidArgument(
                reason='give the older state as the first argument or as '
                       '--from-snap, not both')
        if '@' not in refs[0]:
            raise exception.InvalidArgument(
                reason='%s is not a snapshot (volume@snapshot): the older '
                       'state is a snapshot' % refs[0])
        older, newer = refs
        if older.split('@', 1)[0] != newer.split('@', 1)[0]:
            raise exception.InvalidArgument(
                reason='%s and %s are not of the same volume'
                       % (older, newer))
        return newer, older
    if len(refs) != 1:
        raise exception.InvalidArgument(
            reason='give one or two states: [VOLUME@OLDER] VOLUME[@NEWER]')
    return refs[0], older


def _interrupt(signum, frame):
    raise KeyboardInterrupt('signal %d' % signum)


def _add_refs(p):
    p.add_argument('refs', nargs='+', metavar='STATE',
                   help='VOLUME[@NEWER], or VOLUME@OLDER VOLUME[@NEWER]: '
                        'the live volume or a snapshot, and the snapshot '
                        'to compare it with.')
    p.add_argument('--from-snap', metavar='OLDER',
                   help='The older snapshot (its name): what changed '
                        'since it.  Without it: everything the state '
                        'holds.')


class VolumeDiff(lister.Lister):
    """List the extents that changed between two states of a volume.

    Found from the chunk servers' block metadata: no data is read.  Each
    extent is "data" (it holds new bytes) or "zero" (discarded or zeroed
    since).  Without an older snapshot, lists the data the state holds.
    Example: ursa volume diff vol1@monday vol1@tuesday (or, up to now:
    ursa volume diff --from-snap monday vol1 -f json)
    """

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        _add_refs(p)
        return p

    def take_action(self, args):
        newer, older = _refs(args)

        async def run(cluster):
            view, since = await diff_mod.open_views(cluster, newer, older)
            try:
                return view.size, await diff_mod.changed_extents(view, since)
            finally:
                await view.close()
        with self.app.data_cluster() as cluster:
            size, extents = cluster.run(run)
        data = sum(e.length for e in extents if e.kind == 'data')
        zero = sum(e.length for e in extents if e.kind == 'zero')
        self.app.stderr.write(
            '%s%s: %d extent(s), %s of data, %s zeroed, of %s\n' % (
                newer, ' since %s' % older if older else '', len(extents),
                units.format_size(data), units.format_size(zero),
                units.format_size(size)))
        return (('offset', 'length', 'kind'),
                [(e.offset, e.length, e.kind) for e in extents])


@contextlib.contextmanager
def _open(path, mode):
    if path == '-':
        yield sys.stdout.buffer if 'w' in mode else sys.stdin.buffer
        return
    with open(path, mode) as f:
        yield f


class VolumeExportDiff(command.Command):
    """Write what changed between two states of a volume as a diff stream.

    A full stream (no older snapshot) holds every extent of data; an
    incremental one only what changed.  "-" writes to standard output.
    Example: ursa volume export-diff vol1@monday vol1@tuesday - |
    ursa --config-file other.conf volume import-diff - vol1 (a full
    stream: ursa volume export-diff vol1@monday monday.diff)
    """

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        _add_refs(p)
        p.add_argument('file', help='File to write, or - (stdout).')
        return p

    def take_action(self, args):
        newer, older = _refs(args)
        bar = progress_bar(None, 'export-diff')
        try:
            with self.app.data_cluster() as cluster, \
                    _open(args.file, 'wb') as out:
                writer = cluster.run(diffstream.export_diff, newer, out,
                                     older, bar.update)
        finally:
            bar.close()
        self.app.stderr.write(
            'Exported %s%s: %d extent(s), %s of data\n' % (
                newer, ' since %s' % older if older else '',
                writer.records, units.format_size(writer.data_bytes)))


class VolumeImportDiff(command.Command):
    """Apply a diff stream to a volume.

    The volume must have the stream's older snapshot (a full stream
    applies to any volume); the stream's newer snapshot is then taken on
    it, so the next incremental applies after it.  A stream that is
    truncated or corrupt is refused and changes nothing: the volume is
    reverted to how it was.  "-" reads standard input.  The volume is
    grown to the stream's size if it is smaller.
    Example: ursa volume import-diff tuesday.diff vol1
    """

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('file', help='Stream to read, or - (stdin).')
        p.add_argument('volume', help='Volume name or id.')
        return p

    def take_action(self, args):
        # SIGTERM as Ctrl-C: the import is undone before the exit.
        signal.signal(signal.SIGTERM, _interrupt)
        bar = progress_bar(None, 'import-diff')
        try:
            with self.app.data_cluster() as cluster, \
                    _open(args.file, 'rb') as src:
                header = cluster.run(diffstream.import_diff, src,
                                     args.volume, bar.update)
        finally:
            bar.close()
        self.app.stdout.write('Applied the diff of %s%s%s to volume %s\n' % (
            header.get('volume'),
            ' since %s' % header['from_snapshot']
            if header.get('from_snapshot') else '',
            ' up to %s' % header['to_snapshot']
            if header.get('to_snapshot') else '', args.volume))

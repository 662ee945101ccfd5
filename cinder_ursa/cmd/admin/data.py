"""Commands that read or write a volume's data through the client library:
``ursa volume import|export|check`` and ``ursa bench``, and the progress
line they print."""

import os
import sys
import time

from cliff import command
from cliff import lister

from cinder_ursa import exception
from cinder_ursa.client import bench
from cinder_ursa.client import check
from cinder_ursa.client import transfer
from cinder_ursa.common import units
from cinder_ursa.protocol import chunkfile


def progress_bar(total, desc):
    from tqdm import tqdm
    return tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024,
                desc=desc, file=sys.stderr, mininterval=0.5,
                disable=None)


class VolumeImport(command.Command):
    """Copy a raw image file into a volume, skipping zero blocks (the
    volume stays thin).  Example: ursa volume import disk.raw vol1"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('file', help='Raw image file to read.')
        p.add_argument('volume', help='Volume name or id.')
        p.add_argument('--create', action='store_true',
                       help='Create the volume with the file\'s size '
                            '(rounded up to 4 KiB) if it does not exist.')
        return p

    def take_action(self, args):
        size = os.path.getsize(args.file)
        master = self.app.master()
        try:
            master.volume(args.volume)
        except exception.NotFound:
            if not args.create:
                raise
            master.create_volume(args.volume, -(-size // chunkfile.BLOCK)
                                 * chunkfile.BLOCK)
        with self.app.data_cluster() as cluster, \
                cluster.open_volume(args.volume) as vol:
            if size > vol.size:
                raise exception.InvalidArgument(
                    reason='%s (%d bytes) is larger than volume %s (%d '
                           'bytes)' % (args.file, size, args.volume,
                                       vol.size))
            bar = progress_bar(size, 'import')
            with open(args.file, 'rb') as f:
                cluster.call(transfer.import_file, vol.volume, f.fileno(),
                             size, bar.update)
            bar.close()
        self.app.stdout.write('Imported %s into volume %s\n'
                              % (units.format_size(size), args.volume))


class VolumeExport(command.Command):
    """Copy a volume into a sparse raw file.  Example:
    ursa volume export vol1 copy.raw"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('volume', help='Volume name or id.')
        p.add_argument('file', help='Raw file to write (sparse: holes where '
                       'the volume has none).')
        p.add_argument('--snapshot', help='Export this snapshot of the '
                                          'volume instead.')
        return p

    def take_action(self, args):
        ref = args.volume
        if args.snapshot:
            ref = '%s@%s' % (args.volume, args.snapshot)
        with self.app.data_cluster() as cluster, \
                cluster.open_volume(ref, writable=False) as vol:
            bar = progress_bar(vol.size, 'export')
            fd = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                         0o644)
            try:
                cluster.call(transfer.export_file, vol.volume, fd, bar.update)
            finally:
                os.close(fd)
                bar.close()
        self.app.stdout.write('Exported volume %s (%s) to %s\n' % (
            args.volume, units.format_size(vol.size), args.file))


class VolumeCheck(lister.Lister):
    """Compare every replica of every chunk of a volume, block by block.

    Lists the problems found (none on a healthy volume) and exits 1 if
    there are any.  --deep reads every block of every replica and checks
    it against its CRC (a torn or rotten block is found only so; it reads
    the whole volume on every replica).  --repair makes the blocks found
    differing or torn identical on every replica, from the chunk's primary
    (safe while the volume is in use), then checks again and lists what
    is left.  Example: ursa volume check vol1 --deep --repair
    """

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('volume', help='Volume name or id.')
        p.add_argument('--deep', action='store_true',
                       help='Read and verify every block of every replica.')
        p.add_argument('--repair', action='store_true',
                       help='Repair the blocks that differ or are torn.')
        return p

    def take_action(self, args):
        with self.app.data_cluster() as cluster:
            bar = progress_bar(None, 'check')
            bar.unit, bar.unit_scale = 'chunk', False

            def progress(done, total):
                bar.total = total
                bar.update(done - bar.n)
            try:
                report = cluster.run(check.check_volume, args.volume, 30.0,
                                     args.deep, args.repair, progress)
            finally:
                bar.close()
        found = report.get('found', report['problems'])
        self.app.stderr.write('%s: %d chunk(s), %d replica(s) compared, %d '
                              'problem(s)%s\n' % (
                                  report['volume'], report['chunks'],
                                  report['replicas'], len(found),
                                  '' if not args.repair else
                                  '; %d block(s) repaired, %d problem(s) '
                                  'left' % (report['repaired'],
                                            len(report['problems']))))
        self.problems = report['problems']
        cols = ('index', 'server', 'problem')
        return cols, [tuple(p[c] for c in cols) for p in report['problems']]

    def run(self, parsed_args):
        rc = super().run(parsed_args)
        return rc or (1 if self.problems else 0)


class Bench(command.Command):
    """Measure IOPS, MiB/s and latency percentiles of the client library.

    Example: ursa bench --rw write --pattern rand --io-size 4K --iodepth 32
    """

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('--volume', help='Existing volume to use (its data '
                                        'is overwritten by write tests). '
                                        'Default: a temporary one.')
        p.add_argument('--size', default='1G', help='Temporary volume size.')
        p.add_argument('--rw', choices=['read', 'write'], default='write',
                       help='Read or write (default: write).')
        p.add_argument('--pattern', choices=['seq', 'rand'], default='seq',
                       help='Sequential or random offsets (default: seq).')
        p.add_argument('--io-size', default='1M',
                       help='Bytes per request, e.g. 4K (default: 1M).')
        p.add_argument('--iodepth', type=int, default=16,
                       help='Requests in flight (default: 16).')
        p.add_argument('--seconds', type=float, default=10.0,
                       help='How long to run (default: 10).')
        p.add_argument('--replicas', type=int,
                       help='Replicas of the temporary volume (default: '
                       'the master\'s default_replicas).')
        return p

    def take_action(self, args):
        master = self.app.master()
        name = args.volume
        temp = name is None
        if temp:
            name = 'bench-%d-%d' % (os.getpid(), int(time.time()))
            master.create_volume(name, units.parse_size(args.size),
                                 replicas=args.replicas)
        try:
            with self.app.data_cluster() as cluster:
                result = cluster.run(
                    bench.run, name, rw=args.rw, pattern=args.pattern,
                    io_size=units.parse_size(args.io_size),
                    iodepth=args.iodepth, seconds=args.seconds)
        finally:
            if temp:
                master.delete_volume(name)
        self.app.stdout.write(
            '%-5s %-4s bs=%-5s qd=%-3d  %9.0f IOPS  %8.1f MiB/s  '
            'lat mean %7.0f us  p50 %7.0f us  p99 %7.0f us  (%d ops, %.1f s)\n'
            % (args.rw, args.pattern, args.io_size, args.iodepth,
               result['iops'], result['mibs'], result['mean_us'],
               result['p50_us'], result['p99_us'], result['ops'],
               result['seconds']))


"""ursa: the admin CLI of an Ursa cluster.

Finds the master and the cluster key from, in order: --master and
--key-file, the URSA_MASTER and URSA_KEY_FILE environment variables, or the
[ursa] section of the file named by --config-file / URSA_CONFIG (ursa-aio
prints that line).  Every listing takes ``-f json|table|value``.

Examples::

    export URSA_CONFIG=/var/tmp/ursa/ursa.conf
    ursa cluster status
    ursa volume create vol1 10G --replicas 3
    ursa volume import disk.raw vol1
    ursa volume export vol1 copy.raw
    ursa bench --pattern rand --io-size 4K --iodepth 32 --rw write
"""

import os
import sys
import time

from cliff import app
from cliff import command
from cliff import commandmanager
from cliff import lister
from cliff import show
from oslo_config import cfg

from cinder_ursa import exception
from cinder_ursa.client import bench
from cinder_ursa.client import check
from cinder_ursa.client import master as master_mod
from cinder_ursa.client import sync
from cinder_ursa.client import transfer
from cinder_ursa.common import auth
from cinder_ursa.common import opts as common_opts
from cinder_ursa.common import units
from cinder_ursa.protocol import chunkfile

_when = units.format_time

VERSION = '0.1.0'


class UrsaApp(app.App):

    def __init__(self):
        super().__init__(
            description='Administer an Ursa cluster: status, chunk servers, '
                        'volumes, import/export, benchmarks.',
            version=VERSION,
            command_manager=commandmanager.CommandManager('ursa.cli'),
            deferred_help=True)
        self._master = None
        self._key = None

    def build_option_parser(self, description, version, argparse_kwargs=None):
        parser = super().build_option_parser(description, version,
                                             argparse_kwargs)
        parser.add_argument('--master', default=os.environ.get('URSA_MASTER'),
                            help='Master REST URL (env URSA_MASTER).')
        parser.add_argument('--key-file',
                            default=os.environ.get('URSA_KEY_FILE'),
                            help='Cluster key file (env URSA_KEY_FILE).')
        parser.add_argument('--config-file',
                            default=os.environ.get('URSA_CONFIG'),
                            help='An ursa.conf to read [ursa] master_url and '
                                 'cluster_key_file from (env URSA_CONFIG).')
        return parser

    def _settings(self):
        urls, key_file, key = None, self.options.key_file, None
        if self.options.master:
            urls = [u for u in self.options.master.split(',') if u]
        if self.options.config_file:
            conf = cfg.ConfigOpts()
            common_opts.register_opts(conf)
            conf([], project='ursa', default_config_files=[
                self.options.config_file])
            urls = urls or conf.ursa.master_url
            key_file = key_file or conf.ursa.cluster_key_file
            key = conf.ursa.cluster_key
        if not urls:
            urls = common_opts.common_opts[2].default
        if not key_file and not key and os.path.exists('/etc/ursa/ursa.conf'):
            self.options.config_file = '/etc/ursa/ursa.conf'
            return self._settings()
        return urls, auth.load_key(key_file, key)

    def master(self):
        if self._master is None:
            urls, self._key = self._settings()
            self._master = master_mod.MasterClient(urls, self._key)
        return self._master

    def data_cluster(self):
        master = self.master()
        return sync.SyncCluster(master.urls, self._key)


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
    }


class ClusterStatus(show.ShowOne):
    """Show the health, servers and capacity of the cluster.
    Example: ursa cluster status -f json"""

    def take_action(self, args):
        st = self.app.master().cluster_status()
        row = {
            'health': st['health'],
            'servers_up': st['servers']['up'],
            'servers_down': st['servers']['down'],
            'volumes': st['volumes'],
            'chunks': st['chunks'],
            'degraded_chunks': st['degraded_chunks'],
            'capacity': units.format_size(st['capacity_bytes']),
            'free': units.format_size(st['free_bytes']),
            'used': units.format_size(st['used_bytes']),
            'provisioned': units.format_size(st['provisioned_bytes']),
            'failure_domain': st['failure_domain'],
        }
        return tuple(row), tuple(row.values())


class ClusterCheck(lister.Lister):
    """Compare what every chunk server holds with what the master knows.

    Reports space no volume or snapshot can reach (orphan replicas,
    snapshot layers no live snapshot reads), snapshots left half-made and
    replicas missing from a server; exits 1 if there is any problem.
    Chunk servers that are down cannot be checked and are listed.
    Example: ursa cluster check -f json
    """

    def take_action(self, args):
        with self.app.data_cluster() as cluster:
            report = cluster.run(check.check_cluster)
        self.app.stderr.write(
            '%d chunk server(s), %d volume(s), %d replica(s) holding %s '
            'checked: %d problem(s)\n' % (
                report['servers'], report['volumes'], report['replicas'],
                units.format_size(report['allocated_bytes']),
                len(report['problems'])))
        self.problems = report['problems']
        cols = ('problem', 'server', 'volume', 'index', 'bytes', 'detail')
        return cols, [tuple(p[c] for c in cols) for p in self.problems]

    def run(self, parsed_args):
        rc = super().run(parsed_args)
        return rc or (1 if self.problems else 0)


class ServerList(lister.Lister):
    """List chunk servers with their state, address and usage.
    Example: ursa server list"""

    def take_action(self, args):
        cols = ('id', 'state', 'address', 'port', 'host', 'rack', 'chunks',
                'used', 'free', 'uuid')
        rows = []
        for s in self.app.master().servers():
            rows.append((s['id'], s['state'], s['address'], s['port'],
                         s['host'], s['rack'], s['chunks'],
                         units.format_size(s['used']),
                         units.format_size(s['free']), s['uuid']))
        return cols, rows


class VolumeCreate(show.ShowOne):
    """Create a thin volume.  Example: ursa volume create vol1 10G"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('name', help='Volume name (unique).')
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


class VolumeList(lister.Lister):
    """List volumes with their size, allocated bytes and replicas.
    Example: ursa volume list -f json"""

    def take_action(self, args):
        cols = ('id', 'name', 'size_human', 'replicas', 'allocated_bytes',
                'status', 'lease_holder')
        rows = [tuple(_fmt_volume(v)[c] for c in cols)
                for v in self.app.master().volumes()]
        return cols, rows


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
        p.add_argument('name', help='Snapshot name, unique per volume.')
        return p

    def take_action(self, args):
        snap = self.app.master().create_snapshot(args.volume, args.name)
        s = _fmt_snapshot(snap)
        return tuple(s), tuple(s.values())


class SnapshotList(lister.Lister):
    """List snapshots, of every volume or of one.
    Example: ursa snapshot list --volume vol1"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('--volume', help='Only this volume\'s snapshots.')
        return p

    def take_action(self, args):
        cols = ('id', 'volume', 'name', 'seq', 'size_human', 'status',
                'created_at')
        snaps = self.app.master().snapshots(args.volume)
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


class VolumeClone(show.ShowOne):
    """Create a volume from a snapshot in O(1): it reads the snapshot's
    blocks until it writes its own.
    Example: ursa volume clone vol1@golden vm42 --size 20G"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('snapshot', help='volume@name or id')
        p.add_argument('name', help='Name of the new volume.')
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
            bar = _progress(None, 'flatten')

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


def _progress(total, desc):
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
            bar = _progress(size, 'import')
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
            bar = _progress(vol.size, 'export')
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
            bar = _progress(None, 'check')
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
    evacuates a failed compute host.
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
                'attachments_dropped': f['attachments_dropped']}
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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ursa = UrsaApp()
    try:
        return ursa.run(argv)
    except exception.UrsaError as e:
        print('ursa: %s' % e, file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())

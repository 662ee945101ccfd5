"""``ursa cluster status``, ``ursa cluster check`` and ``ursa server
list``: the cluster as a whole and its chunk servers."""

from cliff import lister
from cliff import show

from cinder_ursa.client import check
from cinder_ursa.common import units


class ClusterStatus(show.ShowOne):
    """Show the health, servers and capacity of the cluster.
    Example: ursa cluster status -f json"""

    def take_action(self, args):
        st = self.app.master().cluster_status()
        row = {
            'health': st['health'],
            'servers_up': st['servers']['up'],
            'servers_down': st['servers']['down'],
            'servers_failed': st['servers'].get('failed', 0),
            'volumes': st['volumes'],
            'chunks': st['chunks'],
            'servers_in_maintenance': st['servers'].get('maintenance', 0),
            'degraded_chunks': st['degraded_chunks'],
            'one_copy_chunks': st.get('one_copy_chunks', 0),
            'joining_replicas': st.get('joining_replicas', 0),
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
        cols = ('id', 'state', 'maintenance', 'address', 'port', 'host',
                'rack', 'chunks', 'used', 'free', 'uuid')
        rows = []
        for s in self.app.master().servers():
            rows.append((s['id'], s['state'], s.get('maintenance', False),
                         s['address'], s['port'],
                         s['host'], s['rack'], s['chunks'],
                         units.format_size(s['used']),
                         units.format_size(s['free']), s['uuid']))
        return cols, rows



class ServerMaintenance(show.ShowOne):
    """Put a chunk server in maintenance, or take it out.

    In maintenance, a server is expected back (a reboot, an upgrade), as
    with Ceph's noout: however long it is away, the repair planner waits
    for it instead of planning copies of its chunks elsewhere, except for
    a chunk left with one copy.  Its replicas are still dropped from the
    replica sets while it is down, and writes go on with the others.
    Example: ursa server maintenance 3 on
    """

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('server', type=int,
                       help='Chunk server id (see ursa server list).')
        p.add_argument('state', choices=['on', 'off'],
                       help='on: in maintenance; off: back to normal.')
        return p

    def take_action(self, args):
        s = self.app.master().set_maintenance(args.server,
                                              args.state == 'on')
        row = {'id': s['id'], 'state': s['state'],
               'maintenance': s['maintenance'], 'address': s['address'],
               'port': s['port']}
        return tuple(row), tuple(row.values())

"""``ursa cluster status``, ``ursa cluster check`` and ``ursa server
list|show|maintenance|drain``: the cluster as a whole and its chunk
servers."""

import argparse
import time

from cliff import lister
from cliff import show

from cinder_ursa.client import check
from cinder_ursa.common import units


class ClusterStatus(show.ShowOne):
    """Show the health, servers and capacity of the cluster, and its
    masters: the leader, its term and the standbys.  With --watch, a live
    view refreshed in place until Ctrl-C.
    Example: ursa cluster status -f json; ursa cluster status --watch"""

    # The terminal's "cursor home, clear screen", before each refresh.
    CLEAR = '\x1b[H\x1b[2J'

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('--watch', nargs='?', type=_interval, const=2.0,
                       metavar='SECONDS',
                       help='Refresh the view in place every SECONDS '
                            '(default 2) until interrupted (Ctrl-C).')
        return p

    def take_action(self, args):
        return self._status()

    def run(self, parsed_args):
        if getattr(parsed_args, 'watch', None) is None:
            return super().run(parsed_args)
        parsed_args = self._run_before_hooks(parsed_args)
        self.formatter = self._formatter_plugins[parsed_args.formatter].obj
        return self._watch(parsed_args)

    def _watch(self, args):
        """Print the view at every refresh, after clearing the screen,
        until Ctrl-C; a master that does not answer is shown as an error
        and asked again at the next refresh."""
        out = self.app.stdout
        try:
            while True:
                try:
                    view = self._status()
                except Exception as e:  # noqa: BLE001 - the view goes on
                    view = e
                out.write(self.CLEAR + time.strftime(
                    'ursa cluster status, every %g s (Ctrl-C to stop)  '
                    '%%Y-%%m-%%d %%H:%%M:%%S\n' % args.watch))
                if isinstance(view, Exception):
                    out.write('error: %s (asking again in %g s)\n'
                              % (view, args.watch))
                else:
                    self.produce_output(args, *view)
                out.flush()
                time.sleep(args.watch)
        except KeyboardInterrupt:
            out.write('\n')
        return 0

    def _status(self):
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
            'servers_draining': st['servers'].get('draining', 0),
            'slow_servers': ', '.join(
                str(i) for i in st.get('slow_servers') or ()) or '-',
        }
        rep = st.get('repair', {})
        left = rep.get('bytes_left_estimate', 0)
        eta = rep.get('eta_s')
        row.update({
            'copies_running': rep.get('running', 0),
            'to_copy_estimate': '%s (estimate)' % units.format_size(left),
            'recovery_rate': '%s/s (last minute)' % units.format_size(
                rep.get('rate_bytes_per_s', 0)),
            'recovery_eta': ('-' if not left else
                             'unknown (no copy ended in the last minute)'
                             if eta is None else _duration(eta)),
            'moves_pending': rep.get('moves_pending', 0),
        })
        row.update(_scrub_rows(st.get('scrub') or {}))
        row.update({
            'capacity': units.format_size(st['capacity_bytes']),
            'free': units.format_size(st['free_bytes']),
            'used': units.format_size(st['used_bytes']),
            'provisioned': units.format_size(st['provisioned_bytes']),
            'failure_domain': st['failure_domain'],
        })
        masters = st.get('masters') or {}
        row.update({
            'leader': masters.get('leader') or '-',
            'term': masters.get('term') if masters.get('term') is not None
            else '-',
            'standbys': ', '.join(masters.get('standbys') or []) or '-',
        })
        return tuple(row), tuple(row.values())


def _scrub_rows(sc):
    """The scrub of every chunk server, summed: what this pass checked,
    its rate and the time left, the bad blocks found, repaired and not,
    and the errors (an unrepaired block, a quarantined disk)."""
    done, total = sc.get('bytes_done', 0), sc.get('bytes_total', 0)
    started = sc.get('oldest_pass_started')
    return {
        'scrub_progress': '%s of %s (%d%%)' % (
            units.format_size(done), units.format_size(total),
            100 * done // total if total else 100),
        'scrub_pass_started': '-' if started is None else time.strftime(
            '%Y-%m-%d %H:%M:%S UTC', time.gmtime(started)),
        'scrub_rate': '%s/s' % units.format_size(
            sc.get('rate_bytes_per_s', 0)),
        'scrub_eta': '-' if sc.get('eta_s') is None
        else _duration(sc['eta_s']),
        'scrub_bad_blocks': 'found %d, repaired %d, unrepaired %d' % (
            sc.get('bad_blocks_found', 0), sc.get('bad_blocks_repaired', 0),
            sc.get('bad_blocks_unrepaired', 0)),
        'light_scrub_blocks_made_identical': sc.get(
            'light_blocks_made_identical', 0),
        'scrub_errors': '; '.join(sc.get('errors') or []) or '-',
    }


def _interval(text):
    """--watch's SECONDS: a number of at least 0.1."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError('not a number: %r' % text)
    if not 0.1 <= v <= 86400:
        raise argparse.ArgumentTypeError(
            'the refresh interval must be between 0.1 and 86400 s')
    return v


def _duration(seconds):
    seconds = int(seconds)
    if seconds < 60:
        return '%d s' % seconds
    if seconds < 3600:
        return '%d min %d s' % divmod(seconds, 60)
    return '%d h %d min' % (seconds // 3600, seconds % 3600 // 60)


class ClusterCheck(lister.Lister):
    """Compare what every chunk server holds with what the master knows.

    Reports space no volume or snapshot can reach (orphan replicas,
    snapshot layers no live snapshot reads), snapshots left half-made and
    replicas missing from a server; exits 1 if there is any problem.
    Chunk servers that are down cannot be checked and are listed.
    With --repair it then fixes what is safe to fix, says what it did,
    and checks again: the master runs a repair round at once (copies of
    chunks that lack some, drains, surplus replicas); orphan copies of
    known chunks are deleted while a replica of the chunk holds a copy
    (never the last copy of anything); a replica missing from a server
    is dropped from the chunk, which the repair planner then copies.
    Example: ursa cluster check --repair -f json
    """

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('--repair', action='store_true',
                       help='Fix what can be fixed safely, then check '
                            'again.')
        return p

    def take_action(self, args):
        with self.app.data_cluster() as cluster:
            report = cluster.run(check.check_cluster)
            self._summary(report)
            if args.repair:
                for line in cluster.run(lambda c: check.repair_cluster(
                        c, report['problems'])):
                    self.app.stderr.write('repair: %s\n' % line)
                started = self.app.master().repair_now()
                self.app.stderr.write(
                    'repair: the master ran a repair round: %d copy or '
                    'move job(s) started, %d running, %d chunk(s) lacking '
                    'copies (ursa cluster status shows the progress)\n' % (
                        len(started['started']), started.get('running', 0),
                        started.get('degraded', 0)))
                for job in started['started']:
                    self.app.stderr.write(
                        'repair: chunk %s/%d (%s): %s\n' % (
                            job['volume_id'], job['index'], job['reason'],
                            _job_text(job)))
                report = cluster.run(check.check_cluster)
                self.app.stderr.write('after repair: ')
                self._summary(report)
        self.problems = report['problems']
        cols = ('problem', 'server', 'volume', 'index', 'bytes', 'detail')
        return cols, [tuple(p[c] for c in cols) for p in self.problems]

    def _summary(self, report):
        self.app.stderr.write(
            '%d chunk server(s), %d volume(s), %d replica(s) holding %s '
            'checked: %d problem(s)\n' % (
                report['servers'], report['volumes'], report['replicas'],
                units.format_size(report['allocated_bytes']),
                len(report['problems'])))

    def run(self, parsed_args):
        rc = super().run(parsed_args)
        return rc or (1 if self.problems else 0)


def _job_text(job):
    if job['target'] is None:
        return 'retire the replica on server %d' % job['retire']
    text = 'copy from server %d to server %d' % (job['source'],
                                                 job['target'])
    if job['retire'] is not None:
        text += ', then retire the replica on server %d' % job['retire']
    return text


class ServerList(lister.Lister):
    """List chunk servers with their state, address and usage.
    Example: ursa server list"""

    def take_action(self, args):
        cols = ('id', 'state', 'health', 'maintenance', 'draining',
                'address', 'port', 'host', 'rack', 'chunks', 'used', 'free',
                'read_p99', 'write_p99', 'sync_p99', 'uuid')
        rows = []
        for s in self.app.master().servers():
            lat = s.get('latency') or {}
            rows.append((s['id'], s['state'], _health(s),
                         s.get('maintenance', False),
                         s.get('draining', False), s['address'], s['port'],
                         s['host'], s['rack'], s['chunks'],
                         units.format_size(s['used']),
                         units.format_size(s['free']),
                         _ms(lat, 'read'), _ms(lat, 'write'),
                         _ms(lat, 'sync'), s['uuid']))
        return cols, rows


def _health(s):
    """One word for a chunk server, from what the master knows: down,
    disk failed, slow (its disk's latency far above its peers'),
    maintenance, draining or ok; the first that applies."""
    if s['state'] == 'failed':
        return 'disk failed' if s.get('failure') else 'failed'
    if s['state'] != 'up':
        return s['state']
    if s.get('slow'):
        return 'slow'
    if s.get('maintenance'):
        return 'maintenance'
    if s.get('draining'):
        return 'draining'
    return 'ok'


def _ms(latency, kind):
    """A p99 latency in milliseconds, '-' without samples."""
    v = latency.get(kind + '_p99')
    if v is None or not latency.get(kind + '_samples'):
        return '-'
    return '%.1f' % (v * 1000)



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


def _server_row(s):
    row = {'id': s['id'], 'state': s['state'],
           'maintenance': s['maintenance'], 'draining': s['draining'],
           'address': s['address'], 'port': s['port'], 'host': s['host'],
           'rack': s['rack'], 'chunks': s['chunks']}
    if 'joining' in s:
        row['joining'] = s['joining']
    if s['draining']:
        row['safe_to_remove'] = not s['chunks'] and not s.get('joining')
    row.update({'used': units.format_size(s['used']),
                'free': units.format_size(s['free']), 'uuid': s['uuid']})
    return row


class ServerShow(show.ShowOne):
    """Show a chunk server: state, maintenance, draining, the replicas it
    holds (chunks) and the copies being made on it (joining).
    A draining server with no replica and no copy being made holds
    nothing the cluster needs: safe_to_remove is then True.
    Example: ursa server show 3
    """

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('server', type=int,
                       help='Chunk server id (see ursa server list).')
        return p

    def take_action(self, args):
        row = _server_row(self.app.master().server(args.server))
        return tuple(row), tuple(row.values())


class ServerDrain(show.ShowOne):
    """Move every replica off a chunk server, so it can be removed.

    The master copies each chunk the server holds to another server (in
    a failure domain the chunk does not use yet) and then takes the
    server's replica out of the chunk and deletes it; repairs of chunks
    that lack copies go first.  No new replica is placed on a draining
    server.  The server must stay up to be copied from: a draining server
    that is down has its chunks copied from the other replicas at once.
    It holds nothing when ``ursa server show`` says chunks 0 and
    safe_to_remove True (--wait waits for that).
    --cancel stops the drain: copies under way end, and the chunk's
    replica that is then one too many is retired.
    Example: ursa server drain 3 --wait
    """

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('server', type=int,
                       help='Chunk server id (see ursa server list).')
        g = p.add_mutually_exclusive_group()
        g.add_argument('--cancel', action='store_true',
                       help='Stop draining the server.')
        g.add_argument('--wait', action='store_true',
                       help='Wait until the server holds no replica.')
        p.add_argument('--timeout', type=float, default=0,
                       help='With --wait: give up (exit status 1) after '
                            'this many seconds (default: wait for good).')
        return p

    def take_action(self, args):
        master = self.app.master()
        s = master.set_draining(args.server, not args.cancel)
        if args.wait:
            deadline = time.monotonic() + args.timeout
            while True:
                s = master.server(args.server)
                if not s['chunks'] and not s.get('joining'):
                    break
                if args.timeout and time.monotonic() > deadline:
                    self.app.stderr.write(
                        'server %d still holds %d replica(s) after %d s\n'
                        % (args.server, s['chunks'], args.timeout))
                    self.failed = True
                    break
                time.sleep(1.0)
        else:
            s = master.server(args.server)
        if args.cancel:
            self.app.stderr.write('server %d no longer drains\n'
                                  % args.server)
        elif not s['chunks'] and not s.get('joining'):
            self.app.stderr.write('server %d holds no replica: it is safe '
                                  'to remove\n' % args.server)
            if s['state'] != 'up':
                self.app.stderr.write(
                    'server %d is %s: the chunks it held are copied from '
                    'their other replicas (ursa cluster status shows the '
                    'degraded chunks left)\n' % (args.server, s['state']))
        else:
            self.app.stderr.write(
                'server %d drains: %d replica(s) left to move (ursa server '
                'show %d; ursa cluster status shows the progress)\n'
                % (args.server, s['chunks'], args.server))
        row = _server_row(s)
        return tuple(row), tuple(row.values())

    failed = False

    def run(self, parsed_args):
        rc = super().run(parsed_args)
        return rc or (1 if self.failed else 0)


class ServerRemove(show.ShowOne):
    """Forget a chunk server that is gone for good.

    Refused while the server is up (stop it first) and while a chunk still
    counts on it: a replica (drain it first with ursa server drain --wait,
    or, for a server that died, wait until its chunks are copied
    elsewhere: ursa server show says chunks 0 and joining 0). The chunks
    that remembered it, to bring its copy up to date should it return,
    forget it. A server removed and started again registers as a new
    server: empty its data directory before reusing the machine (the
    copies left there are no chunk's replicas any more).
    Example: ursa server remove 3
    """

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('server', type=int,
                       help='Chunk server id (see ursa server list).')
        return p

    def take_action(self, args):
        s = self.app.master().remove_server(args.server)
        self.app.stderr.write('chunk server %d removed\n' % s['id'])
        row = {'id': s['id'], 'state': s['state'], 'address': s['address'],
               'port': s['port'], 'host': s['host'], 'uuid': s['uuid']}
        return tuple(row), tuple(row.values())

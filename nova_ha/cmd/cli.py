"""nova-ha: what the evacuators see and do, and the operator's controls.

    nova-ha status                      leader, pause, host counts
    nova-ha host list                   every compute host as nova_ha sees it
    nova-ha host maintenance H --on     never evacuate H (planned work)
    nova-ha host enable H               re-enable a recovered host
    nova-ha recovery list               host recoveries, newest first
    nova-ha recovery show ID            per-instance results of one
    nova-ha pause --reason "..."        stop fencing and evacuating
    nova-ha resume                      go on (after the mass-failure guard)

It reads the evacuators' database ([evacuator] connection of the
--config-file, env NOVA_HA_CONFIG, default /etc/nova-ha/nova-ha.conf).
"""

import os
import sys

from cliff import app
from cliff import command
from cliff import commandmanager
from cliff import lister
from cliff import show
from oslo_config import cfg

from nova_ha import db
from nova_ha import opts

_when = db.format_time

DEFAULT_CONFIG = '/etc/nova-ha/nova-ha.conf'



class NovaHAApp(app.App):
    def __init__(self):
        super().__init__(
            description='nova_ha: compute host failures, recoveries and the '
                        'operator\'s controls.',
            version='1',
            command_manager=commandmanager.CommandManager('nova_ha.cli'),
            deferred_help=True)
        self._store = None

    def build_option_parser(self, description, version, argparse_kwargs=None):
        parser = super().build_option_parser(description, version,
                                             argparse_kwargs)
        parser.add_argument(
            '--config-file',
            default=os.environ.get('NOVA_HA_CONFIG', DEFAULT_CONFIG),
            help='nova-ha.conf holding [evacuator] connection (env '
                 'NOVA_HA_CONFIG, default %s).' % DEFAULT_CONFIG)
        return parser

    def store(self):
        if self._store is None:
            conf = cfg.ConfigOpts()
            opts.register_opts(conf)
            files = ([self.options.config_file]
                     if os.path.exists(self.options.config_file) else [])
            conf([], project='nova-ha', default_config_files=files)
            self._store = db.Store(conf.evacuator.connection)
        return self._store


class Status(show.ShowOne):
    """Show the acting evacuator, whether recoveries are paused, and how
    many hosts are in each state.  Example: nova-ha status"""

    def take_action(self, args):
        s = self.app.store()
        leader = s.get_control('leader') or {}
        paused = s.paused()
        counts = {}
        for h in s.hosts().values():
            counts[h['state']] = counts.get(h['state'], 0) + 1
        info = {
            'leader': leader.get('member', ''),
            'leader_seen': _when(leader.get('at')),
            'paused': bool(paused),
            'paused_reason': paused['reason'] if paused else '',
            'paused_by': paused['by'] if paused else '',
            'hosts': ', '.join('%s=%d' % kv for kv in sorted(counts.items())),
            'active_recoveries': len(s.recoveries(active=True)),
        }
        return tuple(info), tuple(info.values())


class HostList(lister.Lister):
    """List compute hosts as the acting evacuator last saw them: state
    (ok, degraded, suspect, failed, returned, maintenance), its two
    heartbeats (in the tooz group or not; storage: alive, lost, unknown,
    none), Nova's view, and why.  Example: nova-ha host list"""

    def take_action(self, args):
        cols = ('host', 'state', 'since', 'in_group', 'storage',
                'nova_state', 'nova_status', 'maintenance', 'note')
        return cols, [(h['name'], h['state'], _when(h['since']),
                       h['in_group'], h['storage'] or '',
                       h['nova_state'] or '',
                       h['nova_status'] or '', h['maintenance'],
                       h['note'] or '')
                      for h in self.app.store().hosts().values()]


class HostMaintenance(command.Command):
    """Put a host in maintenance (never fenced or evacuated, e.g. while it
    is patched) or take it out.
    Example: nova-ha host maintenance compute-3 --on"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('host', help='Compute host, as Nova names it.')
        g = p.add_mutually_exclusive_group(required=True)
        g.add_argument('--on', action='store_true',
                       help='Enter maintenance.')
        g.add_argument('--off', action='store_true',
                       help='Leave maintenance.')
        return p

    def take_action(self, args):
        self.app.store().set_host_flag(args.host, maintenance=args.on)
        self.app.stdout.write('Host %s: maintenance %s\n' % (
            args.host, 'on' if args.on else 'off'))


class HostEnable(command.Command):
    """Re-enable a recovered host: once its agent is back and its
    nova-compute cleaned up the evacuated instances, the acting evacuator
    unfences it in Ursa and un-forces and enables its compute service.
    Example: nova-ha host enable compute-3"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('host', help='Compute host, as Nova names it.')
        return p

    def take_action(self, args):
        self.app.store().set_host_flag(args.host, enable_requested=True)
        self.app.stdout.write('Host %s: enable requested; "nova-ha host '
                              'list" shows when it is done\n' % args.host)


class RecoveryList(lister.Lister):
    """List host recoveries, newest first.  Example: nova-ha recovery list
    --host compute-3"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('--host', help='Only recoveries of this host.')
        p.add_argument('--limit', type=int, default=50,
                       help='At most this many, newest first (default: '
                       '50).')
        return p

    def take_action(self, args):
        s = self.app.store()
        cols = ('id', 'host', 'state', 'detected', 'finished', 'seconds',
                'to_fence', 'to_down', 'evacuated', 'failed', 'skipped',
                'fenced_by', 'message')
        rows = []

        def after(r, key):
            """Seconds from detection (both heartbeats lost) to ``key``."""
            return ('%.1f' % (r[key] - r['detected_at'])) if r[key] else ''
        for r in s.recoveries(host=args.host, limit=args.limit):
            inst = s.instances(r['id'])
            rows.append((r['id'], r['host'], r['state'],
                         _when(r['detected_at']), _when(r['finished_at']),
                         after(r, 'finished_at'), after(r, 'fenced_at'),
                         after(r, 'disabled_at'),
                         sum(i['status'] == 'done' for i in inst),
                         sum(i['status'] == 'failed' for i in inst),
                         sum(i['status'] == 'skipped' for i in inst),
                         r['fenced_by'] or '', r['message'] or ''))
        return cols, rows


class RecoveryShow(lister.Lister):
    """Show each instance of a recovery: priority, result, attempts,
    destination, why.  Example: nova-ha recovery show 12"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('id', type=int,
                       help='Recovery id, from "nova-ha recovery list".')
        return p

    def take_action(self, args):
        s = self.app.store()
        if s.recovery(args.id) is None:
            raise RuntimeError('No recovery %d; "nova-ha recovery list" '
                               'shows them' % args.id)
        cols = ('uuid', 'name', 'priority', 'status', 'attempts',
                'dest_host', 'finished', 'message')
        return cols, [(i['uuid'], i['name'] or '', i['priority'],
                       i['status'], i['attempts'], i['dest_host'] or '',
                       _when(i['finished_at']), i['message'] or '')
                      for i in s.instances(args.id)]


class Pause(command.Command):
    """Stop fencing and evacuating (detection goes on).
    Example: nova-ha pause --reason 'network maintenance'"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('--reason', default='paused by an operator',
                       help='Shown by "nova-ha status" and in the log.')
        return p

    def take_action(self, args):
        self.app.store().pause(args.reason)
        self.app.stdout.write('Paused: %s\n' % args.reason)


class Resume(command.Command):
    """Resume recoveries, including those the mass-failure guard held:
    run it once you know the failed hosts are really down (not cut off).
    Example: nova-ha resume"""

    def take_action(self, args):
        s = self.app.store()
        held = [r['host'] for r in s.recoveries(active=True)
                if r['state'] == 'held']
        s.resume()
        self.app.stdout.write('Resumed%s\n' % (
            '; recoveries of %s go ahead (each cancelled if its host is '
            'back by then)' % ', '.join(held) if held else ''))


def main(argv=None):
    return NovaHAApp().run(sys.argv[1:] if argv is None else argv)


if __name__ == '__main__':
    sys.exit(main())

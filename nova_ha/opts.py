"""nova_ha's options, for nova-ha-agent, nova-ha-evacuator and nova-ha."""

import socket

from keystoneauth1 import loading as ks_loading
from oslo_config import cfg

from cinder_ursa.common import opts as ursa_opts

# The compute API microversion nova_ha speaks: 2.94, the newest before
# 2.95, from which every evacuated instance is rebuilt STOPPED (found
# against real Nova).  At 2.94 an evacuated instance keeps its state:
# ACTIVE comes back ACTIVE, STOPPED stays STOPPED.  2.68+ has no "force"
# (the scheduler always checks the target); 2.59 pages os-migrations; 2.53
# addresses services by UUID and sets forced_down and status in one call.
NOVA_MICROVERSION = '2.94'
NOVA_TIMEOUT = 30

default_opts = [
    cfg.StrOpt('state_path', default='/var/lib/nova-ha',
               help='Directory for nova_ha\'s state: the default database, '
                    'the default coordination directory and the agent\'s '
                    'maintenance file.'),
]

coordination_group = cfg.OptGroup(
    'coordination', title='tooz coordination',
    help='Membership of compute hosts and election of the acting '
         'evacuator.')
coordination_opts = [
    cfg.StrOpt('backend_url',
               default='file://$state_path/coordination?timeout=8',
               help='tooz backend URL.  The file driver suits one machine; '
                    'production uses etcd3+http://, zookeeper:// or '
                    'redis:// on the controllers.  How long a silent '
                    'member stays in the group is the URL\'s "timeout" '
                    '(file, etcd3) or "membership_timeout" (redis) '
                    'parameter: 8 s, as [evacuator] storage_timeout, '
                    'makes host death to instances ACTIVE elsewhere under '
                    '30 s (see the nova_ha guide for what it costs).'),
    cfg.StrOpt('group', default='nova-ha-computes',
               help='tooz group the agents join.'),
    cfg.FloatOpt('heartbeat_interval', default=1.0, min=0.1,
                 help='Seconds between the agent\'s tooz heartbeats (its '
                      'network heartbeat).'),
]

agent_group = cfg.OptGroup('agent', title='nova-ha-agent',
                           help='The agent on every compute host.')
agent_opts = [
    cfg.StrOpt('host', default=socket.gethostname(),
               sample_default='<hostname>',
               help='This compute host\'s name as Nova knows it (nova.conf '
                    '[DEFAULT] host).  It is the agent\'s tooz member id.'),
    cfg.FloatOpt('check_interval', default=2.0, min=0.1,
                 help='Seconds between local health checks.'),
    cfg.FloatOpt('storage_heartbeat_interval', default=1.0, min=0.1,
                 max=60.0,
                 help='Seconds between the host\'s storage heartbeats to '
                      'the Ursa master ([ursa] master_url): the second '
                      'heartbeat, on a path independent of the coordination '
                      'backend.  The evacuator fails a host only once both '
                      'are silent.'),
    cfg.FloatOpt('isolation_timeout', default=10.0, min=1.0,
                 help='Seconds without any heartbeat getting through '
                      '(neither the coordination backend nor the Ursa '
                      'master) after which this host takes itself for '
                      'isolated and applies isolation_response.  Between '
                      'the evacuator\'s storage_timeout and storage_timeout '
                      '+ grace_period, so the response comes before the '
                      'fence.  Needs the storage heartbeat.'),
    cfg.StrOpt('isolation_response', default='stop',
               choices=[('stop', 'stop the HA instances (with '
                                 'stop_instance_command): they are '
                                 'restarted elsewhere, and nothing runs '
                                 'twice when the link comes back'),
                        ('leave_running', 'leave them running: their '
                                          'writes are refused from the '
                                          'fence on')],
               help='What an isolated host (or one nova_ha fenced) does '
                    'with its HA instances.'),
    cfg.StrOpt('isolation_check_command', default='',
               help='Command run when both heartbeats are lost: exit 0 '
                    'means this host still reaches its network, so the '
                    'controllers are down, not this host\'s link, and no '
                    'isolation response is applied.  Empty: a ping of the '
                    'host\'s default gateway (none: isolated); "false": '
                    'no check.'),
    cfg.StrOpt('stop_instance_command',
               default='virsh -c qemu:///system destroy {uuid}',
               help='Command that stops one instance, run with {uuid} (the '
                    'instance and its libvirt domain) and {name} replaced.'),
    cfg.FloatOpt('instances_refresh', default=60.0, min=0.1,
                 help='Seconds between the agent\'s reads of its host\'s HA '
                      'instances from Nova (its [nova] section; the '
                      '[evacuator] policy and ha_key select them), kept '
                      'for the isolation response.'),
    cfg.StrOpt('nova_compute_process', default='nova-compute',
               help='A string the nova-compute process has in its command '
                    'line; empty: not checked.'),
    cfg.StrOpt('hypervisor_check_command', default='',
               help='Command that exits 0 when the hypervisor answers, e.g. '
                    '"virsh -c qemu:///system version"; empty: not '
                    'checked.'),
    cfg.BoolOpt('check_storage', default=True,
                help='Send the storage heartbeat to the Ursa master ([ursa] '
                     'master_url, with a key: best a host principal named '
                     'after this host) and report whether it gets '
                     'through.'),
    cfg.StrOpt('maintenance_file', default='$state_path/maintenance',
               help='While this file exists the agent reports its host in '
                    'maintenance (its text is the reason): nova_ha never '
                    'evacuates a host in maintenance.'),
]

evacuator_group = cfg.OptGroup(
    'evacuator', title='nova-ha-evacuator',
    help='Failure detection, fencing and evacuation.')
evacuator_opts = [
    cfg.StrOpt('connection', secret=True,
               default='sqlite:///$state_path/nova-ha.sqlite',
               help='SQLAlchemy URL of the database holding recoveries, '
                    'shared by every evacuator (and the nova-ha CLI), so a '
                    'new leader picks up unfinished work.  Use MySQL when '
                    'evacuators run on several controllers.'),
    cfg.FloatOpt('poll_interval', default=1.0, min=0.1,
                 help='Seconds between checks of group membership and of '
                      'Nova\'s compute services.'),
    cfg.FloatOpt('grace_period', default=5.0, min=0,
                 help='Seconds a host must stay suspect (both of its '
                      'heartbeats lost: its agent gone from the group AND '
                      'its storage heartbeat silent for storage_timeout) '
                      'before it is fenced and evacuated.  Skipped when '
                      'Nova reports its nova-compute down too.  A host that '
                      'sends no storage heartbeat needs its agent gone and '
                      'Nova\'s nova-compute down instead.'),
    cfg.FloatOpt('storage_timeout', default=8.0, min=1.0,
                 help='Seconds without a storage heartbeat (the agents\' '
                      'heartbeats to the Ursa master) after which a host\'s '
                      'storage heartbeat counts as lost.  Keep it above a '
                      'few of the agents\' storage_heartbeat_interval.'),
    cfg.BoolOpt('ursa_second_opinion', default=False,
                help='Also require that the host holds no live Ursa lease '
                     '(its clients stopped renewing them) before declaring '
                     'it failed.  Set grace_period above the lease ttl.'),
    cfg.StrOpt('policy', default='ha_enabled',
               choices=[('all', 'evacuate every instance'),
                        ('ha_enabled', 'evacuate only instances with '
                                       '<ha_key>=true in their metadata or '
                                       'flavor extra specs')],
               help='Which instances of a failed host are evacuated.'),
    cfg.StrOpt('ha_key', default='HA_enabled',
               help='Instance metadata key or flavor extra spec that marks '
                    'an instance for evacuation.'),
    cfg.StrOpt('priority_key', default='HA_priority',
               help='Instance metadata key or flavor extra spec holding an '
                    'integer: higher priorities are evacuated first.'),
    cfg.ListOpt('reserved_hosts', default=[],
                help='Spare compute hosts: evacuations target the first '
                     'of them that is up; empty: Nova\'s scheduler '
                     'chooses.'),
    cfg.BoolOpt('fence_required', default=True,
                help='Never evacuate a host that was not fenced.  With no '
                     'fence method configured (neither [ursa] master_url '
                     'with use_ursa_fencing nor fence_command) nothing is '
                     'evacuated unless this is False.'),
    cfg.BoolOpt('use_ursa_fencing', default=True,
                help='Fence through the Ursa master: revoke every lease '
                     'the host holds, so chunk servers refuse its writes.'),
    cfg.StrOpt('fence_command', default='',
               help='Command that powers the host off or isolates it '
                    '(e.g. an ipmitool call), run with {host} replaced by '
                    'the host name; exit 0 means fenced.  Empty: none.'),
    cfg.FloatOpt('fence_timeout', default=60.0, min=1,
                 help='Seconds fence_command may run.'),
    cfg.IntOpt('max_attempts', default=3, min=1,
               help='Evacuation attempts per instance before it is '
                    'reported failed.'),
    cfg.FloatOpt('retry_backoff', default=10.0, min=0,
                 help='Seconds before the first retry; doubled for each '
                      'next one.'),
    cfg.FloatOpt('evacuation_timeout', default=600.0, min=1,
                 help='Seconds an evacuation may take before it counts as '
                      'a failed attempt.'),
    cfg.FloatOpt('mass_failure_fraction', default=0.5, min=0, max=1,
                 help='Pause when more than this fraction of compute hosts '
                      'fail within mass_failure_window (a partition is more '
                      'likely than dead hosts).'),
    cfg.IntOpt('mass_failure_hosts', default=0, min=0,
               help='Pause when more than this many hosts fail within '
                    'mass_failure_window; 0: only the fraction counts.'),
    cfg.FloatOpt('mass_failure_window', default=300.0, min=1,
                 help='Seconds over which failures count towards the '
                      'mass-failure guard.'),
    cfg.BoolOpt('auto_enable_recovered_hosts', default=False,
                help='Re-enable a host (and unfence it) as soon as its '
                     'agent is back and Nova cleaned up its evacuated '
                     'instances; by default an operator runs '
                     '"nova-ha host enable".'),
    cfg.IntOpt('metrics_port', default=0, min=0, max=65535,
               help='Port of the Prometheus /metrics endpoint; 0: off.'),
    cfg.HostAddressOpt('metrics_host', default='127.0.0.1',
                       help='Address of the /metrics endpoint.'),
    cfg.FloatOpt('metrics_timeout', default=5.0, min=0.1,
                 help='Seconds a /metrics connection may take to send its '
                      'request, and then to take the answer, before it is '
                      'closed.'),
    cfg.IntOpt('metrics_max_connections', default=64, min=1,
               help='Connections the /metrics endpoint keeps open at '
                    'once; one more closes the one open the longest (so '
                    'idle connections cannot lock the scraper out). All '
                    'are served by one thread.'),
]

nova_group = cfg.OptGroup(
    'nova', title='Nova API',
    help='Keystone credentials and endpoint of the compute API (the '
         'evacuator uses microversion %s).' % NOVA_MICROVERSION)


def register_opts(conf):
    conf.register_opts(default_opts)
    for group, opts in ((coordination_group, coordination_opts),
                        (agent_group, agent_opts),
                        (evacuator_group, evacuator_opts)):
        conf.register_group(ursa_opts.fresh_group(group))
        conf.register_opts(opts, group=group.name)
    conf.register_group(ursa_opts.fresh_group(nova_group))
    ks_loading.register_session_conf_options(conf, nova_group.name)
    ks_loading.register_auth_conf_options(conf, nova_group.name)
    ks_loading.register_adapter_conf_options(conf, nova_group.name)
    conf.set_default('service_type', 'compute', group=nova_group.name)
    # A Nova call must never hang the evacuator.
    conf.set_default('timeout', NOVA_TIMEOUT, group=nova_group.name)
    ursa_opts.register_opts(conf)


def _nova_opts():
    opts = (ks_loading.get_session_conf_options()
            + ks_loading.get_auth_common_conf_options()
            + ks_loading.get_adapter_conf_options())
    seen, out = set(), []
    for o in opts + ks_loading.get_auth_plugin_conf_options('password'):
        if o.dest not in seen:
            seen.add(o.dest)
            if o.dest == 'service_type':
                o.default = 'compute'
            elif o.dest == 'timeout':
                o.default = NOVA_TIMEOUT
            out.append(o)
    return out


def list_opts():
    return [('DEFAULT', default_opts),
            (coordination_group, coordination_opts),
            (agent_group, agent_opts),
            (evacuator_group, evacuator_opts),
            (nova_group, _nova_opts())] + ursa_opts.list_opts()

"""nova-ha-evacuator: detects failed compute hosts, fences them and
evacuates their instances.  Run it on two or more controllers; the one
holding the tooz leader lock acts, the others take over (and finish its
recoveries) if it dies::

    nova-ha-evacuator --config-file /etc/nova-ha/nova-ha.conf
"""

import sys

from oslo_log import log as logging

from cinder_ursa.client import master as ursa_master
from nova_ha import db
from nova_ha import evacuator as evacuator_mod
from nova_ha import fence
from nova_ha import metrics as metrics_mod
from nova_ha import nova
from nova_ha.cmd import _service

LOG = logging.getLogger(__name__)


def main(argv=None):
    conf = _service.setup(
        sys.argv[1:] if argv is None else argv, 'nova-ha-evacuator',
        'nova_ha evacuator: fences failed compute hosts and evacuates '
        'their instances through Nova. Example: nova-ha-evacuator '
        '--config-file /etc/nova-ha/nova-ha.conf')
    metrics = metrics_mod.Metrics()
    if conf.evacuator.metrics_port:
        try:
            metrics.serve(conf.evacuator.metrics_port,
                          conf.evacuator.metrics_host,
                          conf.evacuator.metrics_timeout,
                          conf.evacuator.metrics_max_connections)
        except OSError as e:
            sys.exit('nova-ha-evacuator: cannot serve metrics on %s:%d '
                     '(%s); free that port or change [evacuator] '
                     'metrics_port' % (conf.evacuator.metrics_host,
                                       conf.evacuator.metrics_port, e))
    fences = fence.fences_from_conf(conf)
    if not fences and conf.evacuator.fence_required:
        LOG.warning('No fence method is configured: failed hosts will be '
                    'detected but not evacuated. Configure [ursa] '
                    'master_url and principal_key_file (a nova_ha '
                    'principal) or cluster_key_file, or [evacuator] '
                    'fence_command.')
    storage = None
    if fence.ursa_configured(conf):
        # One round over the masters a poll: during an election the
        # storage heartbeats are unknown for a poll or two (hosts are
        # judged the old way), the poll is never held up for it.
        storage = ursa_master.MasterClient.from_conf(conf, timeout=5,
                                                     failover_wait=0)
    else:
        LOG.warning('No Ursa master ([ursa] master_url and a key): hosts '
                    'have no storage heartbeat to judge, so a host fails '
                    'only once Nova reports its nova-compute down too')
    ev = evacuator_mod.Evacuator(
        conf, nova.NovaClient.from_conf(conf),
        db.Store(conf.evacuator.connection), fences, metrics,
        storage=storage)
    _service.stop_on_signals(ev.stop)
    LOG.info('nova-ha-evacuator %s: backend %s, grace %.0f s, policy %s, '
             'fencing %s', ev.member_id, conf.coordination.backend_url,
             conf.evacuator.grace_period, conf.evacuator.policy,
             ', '.join(f.name for f in fences) or 'none')
    ev.run()


if __name__ == '__main__':
    sys.exit(main())

"""nova-ha-agent: heartbeats this compute host into the tooz group and
reports its health (nova-compute running, hypervisor and Ursa reachable,
maintenance).  One per compute host::

    nova-ha-agent --config-file /etc/nova-ha/nova-ha.conf

Put the host in maintenance (nova_ha then never evacuates it) with
``echo 'kernel upgrade' > /var/lib/nova-ha/maintenance`` or
``nova-ha host maintenance <host> --on``.
"""

import sys

from oslo_log import log as logging

from nova_ha import agent as agent_mod
from nova_ha.cmd import _service

LOG = logging.getLogger(__name__)


def main(argv=None):
    conf = _service.setup(
        sys.argv[1:] if argv is None else argv, 'nova-ha-agent',
        'nova_ha agent: keeps this compute host in the tooz group and '
        'reports its health. Example: nova-ha-agent --config-file '
        '/etc/nova-ha/nova-ha.conf')
    agent = agent_mod.Agent(conf)
    _service.stop_on_signals(agent.stop)
    LOG.info('nova-ha-agent for host %s, backend %s', conf.agent.host,
             conf.coordination.backend_url)
    agent.run()


if __name__ == '__main__':
    sys.exit(main())

"""nova-ha-agent: keeps its compute host in the tooz group (the group's
heartbeat expiry is the liveness signal) and reports local health in its
member capabilities."""

import logging
import os
import shlex
import subprocess
import threading

import tooz

from cinder_ursa import exception as ursa_exc
from cinder_ursa.client import master as ursa_master
from nova_ha import coordination

LOG = logging.getLogger(__name__)


def process_running(pattern):
    """Whether a process has ``pattern`` in its command line."""
    me = os.getpid()
    for pid in os.listdir('/proc'):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                cmd = f.read().replace(b'\0', b' ').decode('utf-8', 'replace')
        except OSError:
            continue
        if pattern in cmd:
            return True
    return False


class Agent:
    def __init__(self, conf):
        self.conf = conf
        self.host = conf.agent.host
        self.group = conf.coordination.group
        self.stopping = threading.Event()
        self.coord = None
        self._published = None
        self.master = None
        # A nova_ha principal's key (least rights) or the cluster key.
        if conf.agent.check_storage and (conf.ursa.cluster_key_file
                                         or conf.ursa.cluster_key
                                         or conf.ursa.principal_key_file):
            self.master = ursa_master.MasterClient.from_conf(conf,
                                                             timeout=5)

    def health(self):
        """Each check: True, False, or None when not configured."""
        a = self.conf.agent
        checks = {'nova_compute': None, 'hypervisor': None, 'storage': None}
        if a.nova_compute_process:
            checks['nova_compute'] = process_running(a.nova_compute_process)
        if a.hypervisor_check_command:
            try:
                checks['hypervisor'] = subprocess.run(
                    shlex.split(a.hypervisor_check_command),
                    capture_output=True, timeout=10,
                    check=False).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                checks['hypervisor'] = False
        if self.master is not None:
            try:
                self.master.cluster_status()
                checks['storage'] = True
            except ursa_exc.UrsaError:
                checks['storage'] = False
        maintenance = None
        try:
            with open(a.maintenance_file) as f:
                maintenance = f.read().strip() or 'maintenance'
        except OSError:
            pass
        return {'host': self.host, 'checks': checks,
                'healthy': all(v is not False for v in checks.values()),
                'maintenance': maintenance}

    def _publish(self, caps):
        group = self.group.encode()
        try:
            self.coord.update_capabilities(group, caps).get()
        except tooz.NotImplemented:
            # tooz's file driver keeps capabilities from the join only.
            self.coord.leave_group(group).get()
            self.coord.join_group(group, caps).get()
        self._published = caps

    def _connect(self):
        self.coord = coordination.start(self.conf, self.host)
        caps = self.health()
        coordination.join(self.coord, self.group, caps)
        self._published = caps
        LOG.info('Host %s joined group %s', self.host, self.group)

    def run(self):
        last = None
        while not self.stopping.is_set():
            try:
                if self.coord is None:
                    self._connect()
                caps = self.health()
                if caps != self._published:
                    self._publish(caps)
                state = (caps['healthy'], caps['maintenance'])
                if state != last:
                    LOG.info('Host %s: healthy=%s checks=%s maintenance=%s',
                             self.host, caps['healthy'], caps['checks'],
                             caps['maintenance'])
                    last = state
            except tooz.ToozError as e:
                LOG.warning('Coordination backend: %s; reconnecting', e)
                self._drop()
            self.stopping.wait(self.conf.agent.check_interval)
        self._leave()

    def _drop(self):
        if self.coord is not None:
            try:
                self.coord.stop()
            except tooz.ToozError:
                pass
        self.coord = None

    def _leave(self):
        if self.coord is None:
            return
        try:
            self.coord.leave_group(self.group.encode()).get()
            LOG.info('Host %s left group %s', self.host, self.group)
        except tooz.ToozError as e:
            LOG.warning('Leaving group %s: %s', self.group, e)
        self._drop()

    def stop(self):
        self.stopping.set()

"""ursa-attach: expose the volumes attached to this host as files.

Cinder's driver asks the master to attach a volume to the connector's
host; this agent (one per host, root, /dev/fuse) opens it and serves it as
``<mount_dir>/<volume name>``, the ``device_path`` of the ``local``
connection the driver returns.  Example::

    ursa-attach --config-file /etc/ursa/ursa.conf
"""

import os
import subprocess
import sys
import threading

import mfusepy
from oslo_log import log as logging

from cinder_ursa.attach import agent as attach_agent
from cinder_ursa.attach import opts
from cinder_ursa.client import master as master_mod
from cinder_ursa.client import sync
from cinder_ursa.cmd import _service
from cinder_ursa.common import auth

LOG = logging.getLogger(__name__)


def main(argv=None):
    conf = _service.setup(
        sys.argv[1:] if argv is None else argv, 'ursa-attach',
        opts.register_opts,
        'Ursa attach agent: serves the volumes the master attached to this '
        'host as files under [ursa_attach] mount_dir (FUSE). Example: '
        'ursa-attach --config-file /etc/ursa/ursa.conf')
    ac = conf.ursa_attach
    key = auth.load_key(conf.ursa.cluster_key_file, conf.ursa.cluster_key)
    for d in (ac.mount_dir, ac.state_dir):
        os.makedirs(d, exist_ok=True)
    # A mount left by an agent that was killed: take its place.
    subprocess.run(['umount', '-l', ac.mount_dir], capture_output=True)
    master = master_mod.MasterClient(conf.ursa.master_url, key)
    cluster = sync.SyncCluster(conf.ursa.master_url, key,
                               request_timeout=conf.ursa.request_timeout,
                               liveness_timeout=conf.ursa.liveness_timeout)
    fs = attach_agent.AttachFS()
    agent = attach_agent.Agent(master, cluster, fs, ac.host, ac.mount_dir,
                         ac.poll_interval)

    def start_agent():
        # Once the mount is up (init runs on FUSE's side when it is).
        _service.write_endpoint(
            os.path.join(ac.state_dir, 'endpoint.json'), host=ac.host,
            mount_dir=ac.mount_dir, pid=os.getpid())
        LOG.info('ursa-attach for host %s serving %s', ac.host, ac.mount_dir)
        threading.Thread(target=agent.run, name='attach-agent',
                         daemon=True).start()

    fs.on_mount = start_agent
    try:
        # libfuse handles SIGINT/SIGTERM: they end this call.
        mfusepy.FUSE(fs, ac.mount_dir, foreground=True, allow_other=True,
                     fsname='ursa')
    finally:
        LOG.info('ursa-attach stopping: flushing and closing %d volume(s)',
                 len(fs.volumes))
        agent.stopping.set()
        agent.close_all()
        cluster.close()


if __name__ == '__main__':
    sys.exit(main())

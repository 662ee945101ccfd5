"""ursa-attach: expose the volumes attached to this host as files.

Cinder's driver asks the master to attach a volume to the connector's
host; this agent (one per host, root, /dev/fuse) opens it and serves it as
``<mount_dir>/<volume name>``, the ``device_path`` of the ``local``
connection the driver returns.  Example::

    ursa-attach --config-file /etc/ursa/ursa.conf

SIGTERM, SIGINT or SIGHUP stop it cleanly: the FUSE loop ends, the
volumes are flushed and closed, the mount goes and the exit status is 0.
"""

import os
import signal
import subprocess
import sys
import threading
import time

import mfusepy
from oslo_log import log as logging

from cinder_ursa.attach import agent as attach_agent
from cinder_ursa.attach import metrics as attach_metrics
from cinder_ursa.attach import opts
from cinder_ursa.client import master as master_mod
from cinder_ursa.client import sync
from cinder_ursa.cmd import _service
from cinder_ursa.transport import metrics

LOG = logging.getLogger(__name__)


def main(argv=None):
    conf = _service.setup(
        sys.argv[1:] if argv is None else argv, 'ursa-attach',
        opts.register_opts,
        'Ursa attach agent: serves the volumes the master attached to this '
        'host as files under [ursa_attach] mount_dir (FUSE). Example: '
        'ursa-attach --config-file /etc/ursa/ursa.conf')
    ac = conf.ursa_attach
    try:
        uid, gid, mode = attach_agent.file_owner(ac.owner, ac.group)
    except ValueError as e:
        sys.exit('ursa-attach: %s' % e)
    key = _service.data_key(conf, 'ursa-attach')
    for d in (ac.mount_dir, ac.state_dir):
        os.makedirs(d, exist_ok=True)
    # A mount left by an agent that was killed: take its place.
    subprocess.run(['umount', '-l', ac.mount_dir], capture_output=True)
    master = master_mod.MasterClient(conf.ursa.master_url, key)
    cluster = sync.SyncCluster(conf.ursa.master_url, key,
                               request_timeout=conf.ursa.request_timeout,
                               liveness_timeout=conf.ursa.liveness_timeout)
    pm = metrics.ProcessMetrics('attach')
    am = attach_metrics.AttachMetrics(pm)
    fs = attach_agent.AttachFS(uid, gid, mode, am)
    am.watch(fs)
    agent = attach_agent.Agent(master, cluster, fs, ac.host, ac.mount_dir,
                               ac.poll_interval)
    extra = {}
    metrics_server = None
    if ac.metrics_port:
        # No event loop here (FUSE's threads serve the files): the
        # endpoint has a thread of its own.
        try:
            metrics_server = metrics.MetricsServer(
                pm.registry, ac.metrics_host, ac.metrics_port).start()
        except OSError as e:
            cluster.close()
            sys.exit('ursa-attach: [ursa_attach] metrics_host %s, '
                     'metrics_port %d: %s' % (ac.metrics_host,
                                              ac.metrics_port, e))
        extra['metrics_port'] = metrics_server.port
        LOG.info('Prometheus metrics on http://%s:%d/metrics',
                 ac.metrics_host, metrics_server.port)

    def start_agent():
        # Once the mount is up (init runs on FUSE's side when it is).
        _service.write_endpoint(
            os.path.join(ac.state_dir, 'endpoint.json'), host=ac.host,
            mount_dir=ac.mount_dir, pid=os.getpid(), **extra)
        LOG.info('ursa-attach for host %s serving %s (files %d:%d, mode '
                 '%04o)', ac.host, ac.mount_dir, uid, gid, mode)
        threading.Thread(target=agent.run, name='attach-agent',
                         daemon=True).start()

    fs.on_mount = start_agent
    try:
        status = serve(fs, ac.mount_dir)
    finally:
        LOG.info('ursa-attach stopping: flushing and closing %d volume(s)',
                 len(fs.volumes))
        agent.stopping.set()
        agent.close_all()
        cluster.close()
        if metrics_server is not None:
            metrics_server.shutdown()
    return status


def large_io_options():
    """Mount options for writes of up to 128 KiB per request.  libfuse 3
    always allows them; libfuse 2 (which mfusepy prefers where both are
    installed) cuts every write into 4 KiB requests unless asked for
    ``big_writes``: a backup restored through the mount then ran at a
    few hundred KiB/s."""
    if mfusepy.fuse_version_major == 2:
        return {'big_writes': True, 'max_write': 128 * 1024}
    return {}


def serve(fs, mount_dir):
    """Mount ``fs`` and serve it until a stop signal or an unmount;
    return the exit status (0 for those, 1 if FUSE failed).

    The signals are ours, not libfuse's: left to libfuse (it takes the
    ones still at their default), a signal ends the loop with an error
    that mfusepy raises as ``RuntimeError(8)``, the same as a real
    failure.  So FUSE runs in a thread of its own while the main thread,
    where Python runs signal handlers, waits; a handler only notes the
    signal, and the main thread then asks libfuse to exit and wakes its
    loop with a signal to that thread, which ends FUSE with status 0.
    """
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        # Python's handler is installed, so libfuse leaves these alone.
        signal.signal(sig, lambda signum, frame: stop.append(signum))
    failed = []

    def run():
        try:
            # default_permissions: the kernel enforces the files' owner,
            # group and mode (allow_other lets the QEMU user, not only
            # root, in; without default_permissions it would let every
            # local user in).
            mfusepy.FUSE(fs, mount_dir, foreground=True, allow_other=True,
                         default_permissions=True, fsname='ursa',
                         **large_io_options())
        except RuntimeError as e:
            failed.append(e)

    loop = threading.Thread(target=run, name='fuse-loop')
    loop.start()
    kicked = None  # when the loop was last woken
    logged = False
    while loop.is_alive():
        loop.join(0.2)  # handlers run meanwhile; a stop waits <= 0.2 s
        if not stop or not loop.is_alive():
            continue
        if not logged:
            LOG.info('ursa-attach: %s received, unmounting %s',
                     signal.Signals(stop[0]).name, mount_dir)
            logged = True
        now = time.monotonic()
        if fs.exit() and (kicked is None or now - kicked >= 1.0):
            # The loop sleeps in sem_wait until a signal interrupts it;
            # once more later in case this one came just before it slept.
            kicked = now
            signal.pthread_kill(loop.ident, signal.SIGTERM)
    if failed:
        LOG.error('ursa-attach: FUSE could not mount or serve %s (libfuse '
                  'status %s; its message is above). Check that /dev/fuse '
                  'exists, that this runs as root and that nothing else is '
                  'mounted there.', mount_dir, failed[0])
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""ursa-chunkserver: stores chunk replicas of one data directory.

Example::

    ursa-chunkserver --config-file /etc/ursa/ursa.conf \
        --ursa_chunkserver-data_dir /srv/ursa/disk1
"""

import os
import sys

from oslo_log import log as logging

from cinder_ursa.chunkserver import opts
from cinder_ursa.chunkserver import server as server_mod
from cinder_ursa.chunkserver import smart
from cinder_ursa.cmd import _service
from cinder_ursa.common import auth
from cinder_ursa.transport import limits

LOG = logging.getLogger(__name__)
MiB = 1024 * 1024


def main(argv=None):
    conf = _service.setup(
        sys.argv[1:] if argv is None else argv, 'ursa-chunkserver',
        opts.register_opts,
        'Ursa chunk server: stores and replicates chunks of one data '
        'directory. Example: ursa-chunkserver --config-file '
        '/etc/ursa/ursa.conf')
    cc = conf.ursa_chunkserver
    key = auth.load_key(conf.ursa.cluster_key_file, conf.ursa.cluster_key)
    try:
        tls = _service.server_tls(cc, 'this chunk server')
    except ValueError as e:
        sys.exit('ursa-chunkserver: [ursa_chunkserver] %s' % e)
    if tls is not None and not conf.ursa.data_tls:
        # Its own connections to its peers must speak TLS too.
        sys.exit('ursa-chunkserver: [ursa_chunkserver] tls_cert_file is '
                 'set: set [ursa] data_tls = true as well (on every '
                 'process that reaches the chunk servers)')
    os.makedirs(cc.data_dir, exist_ok=True)

    async def serve(stop):
        cs = server_mod.ChunkServer(
            cc.data_dir, key, conf.ursa.master_url, bind_host=cc.bind_host,
            bind_port=cc.bind_port, advertise_host=cc.advertise_host,
            host=cc.host, rack=cc.rack,
            replication_timeout=cc.replication_timeout,
            liveness_timeout=conf.ursa.liveness_timeout,
            reserved_bytes=cc.reserved_bytes,
            recovery_rate=(cc.recovery_rate_min * MiB,
                           cc.recovery_rate_max * MiB),
            disk_error_limit=cc.disk_error_limit,
            disk_error_window=cc.disk_error_window,
            scrub_interval=cc.scrub_interval,
            light_scrub_interval=cc.light_scrub_interval,
            scrub_error_limit=cc.scrub_error_limit, tls=tls,
            limits=limits.ServerLimits(
                auth_timeout=cc.auth_timeout, idle_timeout=cc.idle_timeout,
                max_connections=cc.max_connections,
                max_unauthenticated=cc.max_unauthenticated,
                max_unauthenticated_per_host=(
                    cc.max_unauthenticated_per_host)),
            metrics_host=cc.metrics_host, metrics_port=cc.metrics_port,
            smart=smart.SmartPoller(
                cc.data_dir, interval=cc.smart_interval,
                smartctl=cc.smartctl_path, device=cc.smart_device,
                device_type=cc.smart_device_type)
            if cc.smart_interval else None)
        await cs.start()
        extra = {'metrics_port': cs.metrics_port} if cs.metrics_port else {}
        _service.write_endpoint(os.path.join(cc.data_dir, 'endpoint.json'),
                                address=cs.advertise_host, port=cs.port,
                                uuid=cs.store.server_uuid, pid=os.getpid(),
                                **extra)
        await stop.wait()
        LOG.info('ursa-chunkserver stopping')
        await cs.stop()

    _service.run(serve)


if __name__ == '__main__':
    main()

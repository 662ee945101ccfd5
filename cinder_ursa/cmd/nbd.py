"""ursa-nbd: exports Ursa volumes over NBD to QEMU, libvirt, nbd-client.

The export name is the volume name or id.  Example::

    ursa-nbd --config-file /etc/ursa/ursa.conf
    qemu-img info nbd://127.0.0.1:10809/vol1
"""

import asyncio
import os
import sys

from oslo_log import log as logging

from cinder_ursa.client import cluster as cluster_mod
from cinder_ursa.client import localread
from cinder_ursa.cmd import _service
from cinder_ursa.common import auth
from cinder_ursa.nbd import opts
from cinder_ursa.nbd import server as server_mod

LOG = logging.getLogger(__name__)


def main(argv=None):
    conf = _service.setup(
        sys.argv[1:] if argv is None else argv, 'ursa-nbd',
        opts.register_opts,
        'Ursa NBD gateway: exports volumes over the NBD protocol. Example: '
        'ursa-nbd --config-file /etc/ursa/ursa.conf, then qemu-img info '
        'nbd://127.0.0.1:10809/VOLUME')
    nc = conf.ursa_nbd
    key = auth.load_key(conf.ursa.cluster_key_file, conf.ursa.cluster_key)
    os.makedirs(nc.state_dir, exist_ok=True)

    async def serve(stop):
        local = None
        if nc.local_chunkserver_dirs:
            local = localread.LocalReplicas(nc.local_chunkserver_dirs)
            LOG.info('Local reads from the replicas of %s',
                     ', '.join(nc.local_chunkserver_dirs))
        cluster = cluster_mod.Cluster(
            conf.ursa.master_url, key, local=local,
            request_timeout=conf.ursa.request_timeout,
            liveness_timeout=conf.ursa.liveness_timeout)
        tls = None
        if nc.tls != 'off':
            if not (nc.tls_cert_file and nc.tls_key_file):
                raise SystemExit('ursa-nbd: [ursa_nbd] tls = %s needs '
                                 'tls_cert_file and tls_key_file' % nc.tls)
            tls = server_mod.tls_context(nc.tls_cert_file, nc.tls_key_file,
                                         nc.tls_ca_file)
        nbd = server_mod.NbdServer(cluster, read_only=nc.read_only,
                                   tls_context=tls,
                                   tls_required=nc.tls == 'required')
        loop = asyncio.get_running_loop()
        servers = [await loop.create_server(
            nbd.protocol, nc.bind_host, nc.bind_port, reuse_address=True)]
        port = servers[0].sockets[0].getsockname()[1]
        if nc.unix_socket:
            servers.append(await loop.create_unix_server(
                nbd.protocol, nc.unix_socket))
        _service.write_endpoint(os.path.join(nc.state_dir, 'endpoint.json'),
                                address=nc.bind_host, port=port,
                                unix_socket=nc.unix_socket, pid=os.getpid())
        LOG.info('ursa-nbd serving on %s:%d%s', nc.bind_host, port,
                 ' and %s' % nc.unix_socket if nc.unix_socket else '')
        await stop.wait()
        LOG.info('ursa-nbd stopping')
        for s in servers:
            s.close()
        for t in list(nbd.connections):
            t.cancel()
        await asyncio.gather(*nbd.connections, return_exceptions=True)
        await cluster.close()
        if local is not None:
            local.close()

    _service.run(serve)


if __name__ == '__main__':
    main()

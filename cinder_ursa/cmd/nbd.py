"""ursa-nbd: exports Ursa volumes over NBD to QEMU, libvirt, nbd-client.

The export name is the volume name or id; over TCP, with
require_attachment (the default) and no TLS client certificate, it
carries the attachment's export token, as ``ursa attachment list`` shows
it.  Example::

    ursa-nbd --config-file /etc/ursa/ursa.conf
    qemu-img info nbd://127.0.0.1:10809/vol1~TOKEN

NBD authenticates nobody unless TLS with client certificates is on, so
the gateway refuses to listen beyond loopback without it (see
:func:`listener_problems`), and its unix socket is 0600 (0660 with
``unix_socket_group``).
"""

import asyncio
import grp
import ipaddress
import os
import socket
import sys

from oslo_log import log as logging

from cinder_ursa.attach import opts as attach_opts
from cinder_ursa.client import cluster as cluster_mod
from cinder_ursa.client import localread
from cinder_ursa.cmd import _service
from cinder_ursa.nbd import opts
from cinder_ursa.nbd import server as server_mod
from cinder_ursa.transport import metrics

LOG = logging.getLogger(__name__)


def is_loopback(host):
    """Whether every address ``host`` (an address or a name) stands for
    is a loopback one."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(i[4][0].split('%')[0]).is_loopback
        for i in infos)


def listener_problems(nc):
    """(fatal error or None, [warnings]) for the listener options of
    ``nc`` (the ``[ursa_nbd]`` group), security audit F3 and F21.

    Beyond loopback, only TLS with client certificates (tls = required
    and tls_ca_file) authenticates a client; anything else needs
    allow_insecure_network, and is then warned about at every start."""
    warnings = []
    authenticated = nc.tls == 'required' and bool(nc.tls_ca_file)
    if nc.tls == 'required' and not nc.tls_ca_file:
        warnings.append(
            '[ursa_nbd] tls = required without tls_ca_file encrypts the '
            'traffic but authenticates no client: anyone who reaches the '
            'port may use the volumes this gateway serves.  Set '
            'tls_ca_file to require client certificates.')
    elif nc.tls == 'optional':
        warnings.append(
            '[ursa_nbd] tls = optional: clients that do not start TLS are '
            'served in clear%s.  Use tls = required.' % (
                ' and without a certificate' if nc.tls_ca_file else ''))
    if authenticated or is_loopback(nc.bind_host):
        return None, warnings
    if not nc.allow_insecure_network:
        return ('ursa-nbd: refusing to listen on %s: NBD authenticates no '
                'client, so anyone who reaches that address could read and '
                'write volumes.  Listen on 127.0.0.1 (or unix_socket), or '
                'set [ursa_nbd] tls = required with tls_ca_file (client '
                'certificates), or accept the risk with [ursa_nbd] '
                'allow_insecure_network = true.' % nc.bind_host), warnings
    warnings.append(
        'ursa-nbd listens on %s without TLS client certificates '
        '([ursa_nbd] allow_insecure_network = true): anyone who reaches '
        'that address can read and write the volumes this gateway may '
        'open.' % nc.bind_host)
    return None, warnings


async def serve_unix(loop, protocol, path, group=None):
    """Listen on unix socket ``path``, created with mode 0600 (the umask
    holds while it is bound: no moment where others may connect), then
    given to ``group`` with mode 0660 when one is named."""
    gid = None
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise SystemExit('ursa-nbd: [ursa_nbd] unix_socket_group %s: no '
                             'such group' % group) from None
    old = os.umask(0o177)
    try:
        server = await loop.create_unix_server(protocol, path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    if gid is not None:
        os.chown(path, -1, gid)
        os.chmod(path, 0o660)
    return server


def main(argv=None):
    def register(conf):
        opts.register_opts(conf)
        attach_opts.register_opts(conf)  # [ursa_attach] host

    conf = _service.setup(
        sys.argv[1:] if argv is None else argv, 'ursa-nbd',
        register,
        'Ursa NBD gateway: exports volumes over the NBD protocol. Example: '
        'ursa-nbd --config-file /etc/ursa/ursa.conf, then qemu-img info '
        'nbd://127.0.0.1:10809/VOLUME')
    nc = conf.ursa_nbd
    fatal, warnings = listener_problems(nc)
    for w in warnings:
        LOG.warning('%s', w)
    if fatal:
        LOG.error('%s', fatal)
        raise SystemExit(fatal)
    key = _service.data_key(conf, 'ursa-nbd')
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
        host = conf.ursa_attach.host
        nbd = server_mod.NbdServer(
            cluster, read_only=nc.read_only, tls_context=tls,
            tls_required=nc.tls == 'required', host=host,
            require_attachment=nc.require_attachment,
            list_exports=nc.list_exports,
            handshake_timeout=nc.handshake_timeout,
            max_connections=nc.max_connections,
            inflight_bytes=nc.inflight_mib * 1024 * 1024,
            recheck_interval=nc.recheck_interval,
            tls_client_names=nc.tls_client_names)
        if nc.require_attachment:
            LOG.info('Serving only volumes attached to host %s '
                     '([ursa_attach] host); a TCP client without a TLS '
                     'client certificate names them VOLUME~TOKEN (the '
                     'Cinder driver\'s nbd_export, or "ursa attachment '
                     'list"), the unix socket serves plain names', host)
        else:
            LOG.warning('[ursa_nbd] require_attachment = false: any volume '
                        'of the cluster may be opened by whoever reaches '
                        'this gateway')
        loop = asyncio.get_running_loop()
        servers = [await loop.create_server(
            nbd.protocol, nc.bind_host, nc.bind_port, reuse_address=True)]
        port = servers[0].sockets[0].getsockname()[1]
        if nc.unix_socket:
            servers.append(await serve_unix(loop, nbd.protocol,
                                            nc.unix_socket,
                                            nc.unix_socket_group))
        pm = metrics.ProcessMetrics('nbd')
        nbd.register_metrics(pm)
        extra = {}
        if await pm.serve_here(nc.metrics_host, nc.metrics_port):
            extra['metrics_port'] = pm.server.port
        _service.write_endpoint(os.path.join(nc.state_dir, 'endpoint.json'),
                                address=nc.bind_host, port=port,
                                unix_socket=nc.unix_socket, pid=os.getpid(),
                                **extra)
        LOG.info('ursa-nbd serving on %s:%d%s', nc.bind_host, port,
                 ' and %s' % nc.unix_socket if nc.unix_socket else '')
        await stop.wait()
        LOG.info('ursa-nbd stopping')
        await pm.close()
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

"""What every Ursa daemon's main() shares: options, logging, the loop."""

import asyncio
import json
import os
import signal
import ssl

from oslo_config import cfg
from oslo_log import log as logging

from cinder_ursa import exception
from cinder_ursa.common import auth
from cinder_ursa.common import opts as common_opts
from cinder_ursa.transport import http

LOG = logging.getLogger(__name__)


def setup(argv, prog, register, description):
    conf = cfg.ConfigOpts()
    common_opts.register_opts(conf)
    register(conf)
    logging.register_options(conf)
    conf(argv, project='ursa', prog=prog, description=description)
    logging.setup(conf, 'ursa')
    # The REST clients of this process verify https:// masters with the
    # [ursa] TLS options.
    http.configure_tls(conf)
    # ... and sign as [ursa] principal (admin: with the cluster key).
    try:
        http.configure_principal(conf)
        # ... and accept, besides its cluster key, those of a rotation.
        auth.set_accepted_keys(auth.load_accepted_keys(
            conf.ursa.accepted_cluster_key_files))
    except exception.InvalidArgument as e:
        raise SystemExit('%s: [ursa] %s' % (prog, e)) from None
    accepted = conf.ursa.accepted_cluster_key_files
    if accepted:
        LOG.warning('Accepting %d cluster key(s) besides this process\'s '
                    '(accepted_cluster_key_files): remove them once the '
                    'rotation is over', len(accepted))
    return conf


def server_tls(group, what):
    """The server TLS context of a listener from its ``tls_cert_file``,
    ``tls_key_file`` and ``tls_ca_file`` options (``group``), None when
    none is set; ValueError naming the option at fault.  With
    ``tls_ca_file``, peers must present a certificate it signed."""
    if not (group.tls_cert_file or group.tls_key_file or group.tls_ca_file):
        return None
    if not group.tls_cert_file:
        raise ValueError('tls_key_file and tls_ca_file need tls_cert_file '
                         '(the certificate of %s)' % what)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(group.tls_cert_file, group.tls_key_file or None)
        if group.tls_ca_file:
            # Mutual TLS: no certificate signed by these CAs, no request.
            ctx.load_verify_locations(cafile=group.tls_ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as e:
        raise ValueError('cannot load tls_cert_file %s, tls_key_file %s or '
                         'tls_ca_file %s: %s' % (
                             group.tls_cert_file, group.tls_key_file,
                             group.tls_ca_file, e)) from e
    return ctx


def data_key(conf, prog):
    """The cluster key of a gateway (``ursa-nbd``, ``ursa-attach``), or
    None when it has none but a principal: it then reaches the chunk
    servers with the tickets the master issues for the volumes attached
    to its host, and a stolen host key reads nothing else."""
    u = conf.ursa
    if not (u.cluster_key or u.cluster_key_file) and \
            http.default_principal() is not None:
        LOG.info('No cluster key: the chunk servers are reached with the '
                 'tickets the master issues to principal %s',
                 http.default_principal()[0])
        return None
    try:
        return auth.load_key(u.cluster_key_file, u.cluster_key)
    except exception.InvalidArgument as e:
        raise SystemExit('%s: %s; or set [ursa] principal and '
                         'principal_key_file' % (prog, e)) from None


def run(coro_fn):
    """Run ``coro_fn(stop_event)`` on uvloop (if present) until SIGINT or
    SIGTERM sets the event and the coroutine returns."""
    try:
        import uvloop
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await coro_fn(stop)

    with runner:
        runner.run(main())


def write_endpoint(path, **info):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(info, f)
    os.replace(tmp, path)

"""ursa-nbd's listener safety (security audit F3, F21): no address
beyond loopback without TLS client certificates unless explicitly
allowed (and then a warning), a warning for TLS that authenticates
nobody, and a unix socket only its owner (or one group) may use."""

import asyncio
import grp
import os
import stat
import types

import pytest

from cinder_ursa.cmd import nbd


def opts(**kw):
    base = dict(bind_host='127.0.0.1', tls='off', tls_ca_file=None,
                allow_insecure_network=False)
    base.update(kw)
    return types.SimpleNamespace(**base)


@pytest.mark.parametrize('host', ['127.0.0.1', '::1', 'localhost',
                                  '127.0.0.53'])
def test_loopback_is_fine(host):
    assert nbd.listener_problems(opts(bind_host=host)) == (None, [])


@pytest.mark.parametrize('host', ['0.0.0.0', '192.0.2.7', '::'])
def test_other_addresses_are_refused_without_client_certificates(host):
    fatal, _ = nbd.listener_problems(opts(bind_host=host))
    assert 'refusing to listen on %s' % host in fatal
    assert 'allow_insecure_network' in fatal and 'tls_ca_file' in fatal
    # TLS that authenticates nobody does not count.
    fatal, warnings = nbd.listener_problems(opts(bind_host=host,
                                                 tls='required'))
    assert fatal and 'authenticates no client' in warnings[0]
    fatal, _ = nbd.listener_problems(opts(bind_host=host, tls='optional',
                                          tls_ca_file='/ca.pem'))
    assert fatal


def test_client_certificates_or_an_explicit_risk_allow_the_network():
    assert nbd.listener_problems(opts(
        bind_host='0.0.0.0', tls='required',
        tls_ca_file='/ca.pem')) == (None, [])
    fatal, warnings = nbd.listener_problems(opts(
        bind_host='0.0.0.0', allow_insecure_network=True))
    assert fatal is None
    assert 'anyone who reaches that address' in warnings[0]


def test_tls_warnings_on_loopback_too():
    _, warnings = nbd.listener_problems(opts(tls='required'))
    assert 'authenticates no client' in warnings[0]
    _, warnings = nbd.listener_problems(opts(tls='optional'))
    assert 'served in clear' in warnings[0]


def serve_unix(path, group=None):
    async def main():
        loop = asyncio.get_running_loop()
        server = await nbd.serve_unix(loop, asyncio.Protocol, str(path),
                                      group)
        mode = os.stat(path)
        server.close()
        return mode
    return asyncio.run(main())


def test_the_unix_socket_is_0600(tmp_path):
    st = serve_unix(tmp_path / 'nbd.sock')
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_the_unix_socket_group(tmp_path):
    group = grp.getgrgid(os.getgid()).gr_name
    st = serve_unix(tmp_path / 'g.sock', group)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == os.getgid()
    with pytest.raises(SystemExit, match='no such group'):
        serve_unix(tmp_path / 'x.sock', 'no-such-group-ursa')

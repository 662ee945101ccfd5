"""A chunk server flooded by strangers: 1000 connections that never
authenticate, then 1000 that each send a header claiming a 64 MiB body.
Its memory stays bounded, the silent ones are closed at the deadline,
the headers are refused at once, and it serves a real client after.

With ``-s`` the test prints the resident memory it measured (the numbers
in doc/source/architecture.rst).  Run against the code before these limits,
the same flood cost 256 KiB per idle connection, held for good, and
64 MiB per header."""

import asyncio
import json
import os
import select
import socket
import time

import pytest

from cinder_ursa.cmd.allinone import AllInOne
from cinder_ursa.protocol import codec
from cinder_ursa.protocol import control
from cinder_ursa.transport import aio
from tests.fixtures.processes import rss_mib

N = 1000
AUTH_TIMEOUT = 5
CLAIM = 64 * 1024 * 1024 + 4096 - 1024     # under MAX_BODY: "valid"

CONFIGS = {
    # Caps raised above N: every connection is held until the deadline,
    # which measures what one costs.
    'held': '[ursa_chunkserver]\nauth_timeout = %d\n'
            'max_unauthenticated = 2000\n'
            'max_unauthenticated_per_host = 2000\n' % AUTH_TIMEOUT,
    # The default caps (256 in all, 64 per source address).
    'default caps': '[ursa_chunkserver]\nauth_timeout = %d\n'
                    % AUTH_TIMEOUT,
}


@pytest.fixture(scope='module', params=list(CONFIGS))
def server(request, tmp_path_factory):
    """One chunk server: (its pid, its port, the config's name)."""
    c = AllInOne(str(tmp_path_factory.mktemp('flood')), 1, port_base=0,
                 extra_conf=CONFIGS[request.param])
    c.start()
    try:
        with open(os.path.join(c.cs_dir(0), 'endpoint.json')) as f:
            port = json.load(f)['port']
        yield c, c.cs_procs[0].pid, port, request.param
    finally:
        c.stop(kill=True)


def connect(port, n, send=b''):
    socks = []
    for _ in range(n):
        s = socket.create_connection(('127.0.0.1', port), timeout=10)
        if send:
            s.sendall(send)
        socks.append(s)
    return socks


def wait_closed(socks, timeout):
    """Read every socket until the server closes it, for at most
    ``timeout`` s; return how many it closed (and take them out of
    ``socks``)."""
    poll = select.poll()
    open_ = {s.fileno(): s for s in socks}
    for fd in open_:
        poll.register(fd, select.POLLIN)
    closed = 0
    deadline = time.monotonic() + timeout
    while open_ and time.monotonic() < deadline:
        for fd, _ in poll.poll(200):
            try:
                data = open_[fd].recv(65536)
            except OSError:
                data = b''
            if not data:
                poll.unregister(fd)
                del open_[fd]
                closed += 1
    socks[:] = open_.values()
    return closed


def still_serving(cluster, port):
    async def go():
        conn = await aio.PeerConnection.connect('127.0.0.1', port,
                                                cluster.key)
        try:
            reply = await conn.call(control.encode_inventory, timeout=10)
            return control.decode_inventory_ok(reply.body)
        finally:
            conn.close()
    assert asyncio.run(go()) == []


def test_strangers_cannot_swell_a_chunk_server(server):
    cluster, pid, port, name = server
    time.sleep(1)
    start = rss_mib(pid)

    t0 = time.monotonic()
    idle = connect(port, N)
    time.sleep(1)
    held_rss = rss_mib(pid)
    left = list(idle)
    refused_at_once = wait_closed(left, 1.0)
    closed = refused_at_once + wait_closed(left, AUTH_TIMEOUT + 10)
    took = time.monotonic() - t0
    for s in idle:
        s.close()
    time.sleep(1)
    after_idle = rss_mib(pid)

    greedy = connect(port, N, codec.header(codec.AUTH, 1, CLAIM))
    t0 = time.monotonic()
    refused = wait_closed(list(greedy), 10)
    refused_in = time.monotonic() - t0
    greedy_rss = rss_mib(pid)
    for s in greedy:
        s.close()
    time.sleep(1)
    end = rss_mib(pid)

    print('\n%s: RSS %.1f MiB at rest; %d idle connections: %.1f MiB '
          '(+%.1f), %d refused at once, all closed %.1f s after they '
          'opened; then: '
          '%.1f MiB; %d headers claiming %d bytes: refused in %.1f s, '
          'RSS %.1f MiB (+%.1f); at the end %.1f MiB (+%.1f)'
          % (name, start, N, held_rss, held_rss - start, refused_at_once,
             took, after_idle, N, CLAIM, refused_in, greedy_rss,
             greedy_rss - start, end, end - start))
    assert closed == N
    if name == 'held':
        assert refused_at_once == 0
        # The deadline, not earlier: every one was held until then.
        assert AUTH_TIMEOUT - 0.5 < took < AUTH_TIMEOUT + 10
    else:
        # At most 64 from one address wait for the deadline.
        assert refused_at_once >= N - 64
    # Was 256 KiB each before authentication: 250 MiB.
    assert held_rss - start < 40, 'grew %.1f MiB' % (held_rss - start)
    assert refused == N
    # Was 64 MiB each.
    assert greedy_rss - start < 40, 'grew %.1f MiB' % (greedy_rss - start)
    still_serving(cluster, port)

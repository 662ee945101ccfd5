"""ursa-nbd against real NBD clients: qemu-img, qemu-io, nbdinfo, nbdcopy,
fio.  Under CI=true a missing client is a failure, elsewhere a skip."""

import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest

from cinder_ursa.cmd.allinone import AllInOne
from cinder_ursa.nbd import protocol as p
from tests.fixtures.cluster import module_cluster
from tests.fixtures.cluster import wait_allocated
from tests.fixtures.processes import growth_when_flooded

MiB = 1024 * 1024


def need(tool):
    if shutil.which(tool) is None:
        if os.environ.get('CI'):
            pytest.fail('%s is not installed; tools/run-tests installs it '
                        'from Debian' % tool)
        pytest.skip('%s is not installed' % tool)


def run(*cmd, timeout=300):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, '%s failed:\n%s%s' % (cmd, r.stdout, r.stderr)
    return r.stdout


@pytest.fixture(scope='module')
def aio(tmp_path_factory):
    yield from module_cluster(tmp_path_factory, 'nbd', nbd=True)


def uri(aio, name):
    return 'nbd://127.0.0.1:%d/%s' % (aio.nbd_port, name)


def test_nbdinfo_lists_and_describes_exports(aio):
    need('nbdinfo')
    aio.client().create_volume('info', 48 * MiB, chunk_size=4 * MiB)
    listing = run('nbdinfo', '--list', '--json', uri(aio, ''))
    names = [e['export-name'] for e in json.loads(listing)['exports']]
    assert 'info' in names
    info = json.loads(run('nbdinfo', '--json', uri(aio, 'info')))
    export = info['exports'][0]
    assert export['export-size'] == 48 * MiB
    assert export['can_flush'] and export['can_fua']
    assert not export['is_read_only']


def test_qemu_img_convert_in_and_out(aio, tmp_path):
    need('qemu-img')
    aio.client().create_volume('qimg', 64 * MiB, chunk_size=4 * MiB)
    src = tmp_path / 'src.raw'
    with open(src, 'wb') as f:
        f.write(os.urandom(5 * MiB + 512))
        f.seek(40 * MiB + 4096 * 3 + 17)
        f.write(os.urandom(3 * MiB))
        f.truncate(64 * MiB)
    run('qemu-img', 'convert', '-n', '-f', 'raw', '-O', 'raw', str(src),
        uri(aio, 'qimg'))
    run('qemu-img', 'compare', '-f', 'raw', '-F', 'raw', str(src),
        uri(aio, 'qimg'))
    out = tmp_path / 'out.raw'
    run('qemu-img', 'convert', '-f', 'raw', '-O', 'raw', uri(aio, 'qimg'),
        str(out))
    assert out.read_bytes() == src.read_bytes()
    info = json.loads(run('qemu-img', 'info', '--output=json',
                          uri(aio, 'qimg')))
    assert info['virtual-size'] == 64 * MiB
    # The copy stayed thin: qemu-img saw the holes (BLOCK_STATUS going
    # out, WRITE_ZEROES/TRIM coming in) and the volume holds the data
    # only (8 MiB + 2 partial blocks, metadata 8 bytes per 4 KiB).
    used = wait_allocated(aio, 'qimg', 8 * MiB)
    assert 8 * MiB <= used <= 8 * MiB + 256 * 1024, used
    assert out.stat().st_blocks * 512 < 12 * MiB



def test_nbdinfo_map_shows_holes_and_trim_makes_new_ones(aio):
    need('nbdinfo')
    need('qemu-io')
    aio.client().create_volume('map', 16 * MiB, chunk_size=4 * MiB)
    run('qemu-io', '-f', 'raw', '-c', 'write -P 0x5a 1M 1M',
        '-c', 'write -P 0x5b 9M 64k', '-c', 'discard 1M 256k',
        '-c', 'write -z -u 1536k 64k', '-c', 'write -z 1664k 64k',
        uri(aio, 'map'))
    extents = json.loads(run('nbdinfo', '--map', '--json', uri(aio, 'map')))
    data = [(e['offset'], e['length']) for e in extents
            if not e['type'] & 1]
    # discard and write -z -u (may unmap) make holes; write -z (NO_HOLE)
    # keeps the zeros allocated.
    assert data == [(1 * MiB + 256 * 1024, 256 * 1024),
                    (1536 * 1024 + 64 * 1024, 448 * 1024),
                    (9 * MiB, 64 * 1024)]
    holes = [e for e in extents if e['type'] == 3]
    assert holes[0]['offset'] == 0 and sum(
        e['length'] for e in extents) == 16 * MiB
    out = run('qemu-io', '-f', 'raw', '-c', 'read -P 0 1M 256k',
              '-c', 'read -P 0x5a 1280k 256k', '-c', 'read -P 0 1536k 64k',
              '-c', 'read -P 0 1664k 64k', '-c', 'read -P 0x5a 1600k 64k',
              uri(aio, 'map'))
    assert 'Pattern verification failed' not in out


def test_snapshots_export_read_only_without_a_lease(aio, tmp_path):
    need('qemu-io')
    need('nbdinfo')
    aio.client().create_volume('snapvol', 8 * MiB, chunk_size=4 * MiB)
    run('qemu-io', '-f', 'raw', '-c', 'write -P 0x42 0 2M',
        uri(aio, 'snapvol'))
    aio.client().create_snapshot('snapvol', 'one')
    # The volume stays writable (and leased by the gateway) meanwhile.
    run('qemu-io', '-f', 'raw', '-c', 'write -P 0x43 0 1M',
        uri(aio, 'snapvol'))
    info = json.loads(run('nbdinfo', '--json', uri(aio, 'snapvol@one')))
    assert info['exports'][0]['is_read_only']
    out = run('qemu-io', '-r', '-f', 'raw', '-c', 'read -P 0x42 0 2M',
              uri(aio, 'snapvol@one'))
    assert 'Pattern verification failed' not in out
    r = subprocess.run(['qemu-io', '-f', 'raw', '-c', 'write 0 4k',
                        uri(aio, 'snapvol@one')], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode != 0 or 'failed' in (r.stdout + r.stderr).lower()
    out = run('qemu-io', '-f', 'raw', '-c', 'read -P 0x43 0 1M',
              '-c', 'read -P 0x42 1M 1M', uri(aio, 'snapvol'))
    assert 'Pattern verification failed' not in out


def test_qemu_io_patterns_and_unaligned_writes(aio):
    need('qemu-io')
    aio.client().create_volume('qio', 16 * MiB, chunk_size=4 * MiB)
    out = run('qemu-io', '-f', 'raw',
              '-c', 'write -P 0xab 0 1M', '-c', 'read -P 0xab 0 1M',
              '-c', 'write -P 0xcd 513 3000', '-c', 'read -P 0xcd 513 3000',
              '-c', 'read -P 0xab 0 513', '-c', 'read -P 0xab 3513 4000',
              '-c', 'write -P 0x11 4194300 10',
              '-c', 'read -P 0x11 4194300 10', '-c', 'flush',
              uri(aio, 'qio'))
    assert 'Pattern verification failed' not in out
    assert out.count('read ') == 5


def test_nbdcopy_both_ways(aio, tmp_path):
    need('nbdcopy')
    aio.client().create_volume('copy', 32 * MiB, chunk_size=4 * MiB)
    src = tmp_path / 'a.raw'
    src.write_bytes(os.urandom(32 * MiB))
    run('nbdcopy', str(src), uri(aio, 'copy'))
    back = tmp_path / 'b.raw'
    run('nbdcopy', uri(aio, 'copy'), str(back))
    assert back.read_bytes() == src.read_bytes()


@pytest.mark.parametrize('rw,bs,depth', [('randrw', '4k', 16),
                                         ('rw', '1M', 4)])
def test_fio_verify(aio, tmp_path, rw, bs, depth):
    need('fio')
    name = 'fio-%s-%s' % (rw, bs)
    aio.client().create_volume(name, 64 * MiB, chunk_size=4 * MiB)
    job = tmp_path / 'job.fio'
    job.write_text('[global]\nioengine=nbd\nuri=%s\nsize=48M\n'
                   'verify=crc32c\ndo_verify=1\nverify_fatal=1\n'
                   'verify_state_save=0\n'
                   '[job]\nrw=%s\nbs=%s\niodepth=%d\n'
                   % (uri(aio, name), rw, bs, depth))
    out = run('fio', '--output-format=json', str(job))
    result = json.loads(out[out.index('{'):])['jobs'][0]
    assert result['error'] == 0
    assert result['write']['io_bytes'] > 0


# --- protocol abuse ---------------------------------------------------------

def connect(aio, name):
    """Fixed-newstyle handshake by hand; returns (socket, size, flags)."""
    s = socket.create_connection(('127.0.0.1', aio.nbd_port), timeout=10)
    magic, opt, hflags = p.HANDSHAKE.unpack(s.recv(18, socket.MSG_WAITALL))
    assert (magic, opt) == (p.NBDMAGIC, p.IHAVEOPT)
    s.sendall(struct.pack('>I', p.FLAG_C_FIXED_NEWSTYLE | p.FLAG_C_NO_ZEROES))
    s.sendall(p.OPTION.pack(p.IHAVEOPT, p.OPT_EXPORT_NAME, len(name)) +
              name.encode())
    size, flags = p.EXPORT_NAME_REPLY.unpack(s.recv(10, socket.MSG_WAITALL))
    return s, size, flags


def request(s, cmd, offset, length, handle=7, data=b''):
    s.sendall(p.REQUEST.pack(p.REQUEST_MAGIC, 0, cmd, handle, offset,
                             length) + data)
    magic, err, h = p.SIMPLE_REPLY.unpack(s.recv(16, socket.MSG_WAITALL))
    assert magic == p.SIMPLE_REPLY_MAGIC and h == handle
    payload = b''
    if cmd == p.CMD_READ and not err:
        payload = s.recv(length, socket.MSG_WAITALL)
    return err, payload


def test_abuse_gets_errors_and_others_keep_working(aio):
    aio.client().create_volume('abuse', 8 * MiB, chunk_size=4 * MiB)
    # Garbage instead of client flags: the connection is closed.
    with socket.create_connection(('127.0.0.1', aio.nbd_port)) as s:
        s.recv(18, socket.MSG_WAITALL)
        s.sendall(os.urandom(64))
        s.settimeout(10)
        assert s.recv(1024) == b''
    # Truncated handshake.
    with socket.create_connection(('127.0.0.1', aio.nbd_port)) as s:
        s.recv(10)
    # Unknown export: closed without a reply.
    s = socket.create_connection(('127.0.0.1', aio.nbd_port), timeout=10)
    s.recv(18, socket.MSG_WAITALL)
    s.sendall(struct.pack('>I', 3) + p.OPTION.pack(
        p.IHAVEOPT, p.OPT_EXPORT_NAME, 4) + b'nope')
    assert s.recv(10) == b''
    s.close()

    s, size, flags = connect(aio, 'abuse')
    assert size == 8 * MiB and flags & p.TF_HAS_FLAGS
    assert request(s, p.CMD_WRITE, 0, 4096, data=b'w' * 4096)[0] == 0
    assert request(s, p.CMD_READ, 0, 4096) == (0, b'w' * 4096)
    assert request(s, p.CMD_READ, 8 * MiB - 10, 20)[0] == p.NBD_EINVAL
    assert request(s, p.CMD_WRITE, 8 * MiB, 4096,
                   data=b'x' * 4096)[0] == p.NBD_ENOSPC
    assert request(s, p.CMD_READ, 0, 64 * MiB)[0] == p.NBD_EINVAL
    assert request(s, 99, 0, 0)[0] == p.NBD_EINVAL
    assert request(s, p.CMD_FLUSH, 0, 0)[0] == 0
    # A WRITE claiming more payload than the limit closes the connection.
    s.sendall(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_WRITE, 1, 0,
                             0xFFFFFFFF))
    assert s.recv(16) == b''
    s.close()
    # Bad request magic closes the connection too.
    s, _, _ = connect(aio, 'abuse')
    s.sendall(b'\0' * 28)
    assert s.recv(16) == b''
    s.close()
    # And a fresh client is served as before.
    s, _, _ = connect(aio, 'abuse')
    assert request(s, p.CMD_READ, 0, 4096) == (0, b'w' * 4096)
    s.sendall(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_DISC, 0, 0, 0))
    s.close()


def test_disconnect_finishes_the_requests_in_flight(aio):
    """NBD_CMD_DISC: the server handles every outstanding request before it
    closes, also writes running on callbacks with nothing else (no task,
    no data to flush) left to wait for."""
    aio.client().create_volume('disc', 8 * MiB, chunk_size=4 * MiB)
    s, _, _ = connect(aio, 'disc')
    # Chunk 0 mapped, nothing unflushed: its writes take the callback path.
    assert request(s, p.CMD_WRITE, 0, 4096, data=bytes(4096))[0] == 0
    assert request(s, p.CMD_FLUSH, 0, 0)[0] == 0
    offsets = [i * 16 * 1024 for i in range(200)]  # all in chunk 0
    blocks = [os.urandom(4096) for _ in offsets]
    s.sendall(b''.join(
        p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_WRITE, i, off, 4096) + data
        for i, (off, data) in enumerate(zip(offsets, blocks, strict=True))) +
        p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_DISC, 0, 0, 0))
    # The replies, then the server's close, which comes after them all.
    s.settimeout(30)
    got = b''
    while chunk := s.recv(65536):
        got += chunk
    s.close()
    replies = [p.SIMPLE_REPLY.unpack_from(got, at)
               for at in range(0, len(got), p.SIMPLE_REPLY.size)]
    assert sorted(h for _, _, h in replies) == list(range(len(offsets)))
    assert {err for _, err, _ in replies} == {0}
    s, _, _ = connect(aio, 'disc')
    got = [request(s, p.CMD_READ, off, 4096) for off in offsets]
    s.close()
    missing = [off for off, g, b in zip(offsets, got, blocks, strict=True)
               if g != (0, b)]
    assert missing == []


def test_a_client_that_reads_no_replies_cannot_swell_the_gateway(aio):
    """4 GiB worth of READ requests whose replies the client never reads:
    the gateway stops reading that connection (its memory stays bounded)
    and keeps serving everybody else."""
    aio.client().create_volume('greedy', 8 * MiB, chunk_size=4 * MiB)
    s, _, _ = connect(aio, 'greedy')
    data = os.urandom(MiB)
    assert request(s, p.CMD_WRITE, 0, MiB, data=data)[0] == 0
    reqs = b''.join(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_READ, i, 0, MiB)
                    for i in range(4096))
    grown = growth_when_flooded(s, reqs, aio.nbd_proc.pid)
    assert grown < 700, 'the gateway grew by %d MiB' % grown
    other, _, _ = connect(aio, 'greedy')
    assert request(other, p.CMD_READ, 0, 4096) == (0, data[:4096])
    other.close()
    # The greedy client still gets its replies.
    s.settimeout(30)
    magic, err, _ = p.SIMPLE_REPLY.unpack(s.recv(16, socket.MSG_WAITALL))
    assert (magic, err) == (p.SIMPLE_REPLY_MAGIC, 0)
    got = bytearray()
    while len(got) < MiB:  # with a timeout, MSG_WAITALL may return less
        got += s.recv(MiB - len(got))
    assert got == data
    s.close()


# --- faults and snapshots under load -----------------------------------------

def test_fio_survives_kill_of_a_chunkserver(tmp_path):
    """kill -9 one chunk server while fio writes and verifies through the
    gateway: fio finishes with zero errors."""
    need('fio')
    c = AllInOne(str(tmp_path / 'c'), 4, port_base=0, server_timeout=3.0)
    c.start(nbd=True)
    try:
        c.client().create_volume('ha', 64 * MiB, chunk_size=4 * MiB)
        job = tmp_path / 'job.fio'
        job.write_text(
            '[global]\nioengine=nbd\nuri=%s\nsize=24M\nverify=crc32c\n'
            'do_verify=1\nverify_fatal=1\nverify_state_save=0\n'
            # Rate-limited to about 3 s each, so the kill below lands
            # while both write (unlimited, a fast run once finished in
            # under the 1.5 s before the kill).
            '[rand]\nrw=randwrite\nbs=4k\niodepth=16\noffset=0\n'
            'rate_iops=2000\n'
            '[seq]\nrw=write\nbs=256k\niodepth=4\noffset=32M\n'
            'rate=8m\n'
            % uri(c, 'ha'))
        fio = subprocess.Popen(['fio', '--output-format=json', str(job)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
        time.sleep(1.5)
        assert fio.poll() is None, 'fio ended before the kill'
        c.kill_chunkserver(1)
        out, err = fio.communicate(timeout=240)
        assert fio.returncode == 0, err
        jobs = json.loads(out[out.index('{'):])['jobs']
        assert [j['error'] for j in jobs] == [0, 0], err
        assert all(j['write']['io_bytes'] > 0 for j in jobs)
    finally:
        c.stop(kill=True)


def test_snapshot_while_writing_through_the_gateway(aio):
    """A snapshot taken while an NBD client keeps writing holds every write
    the gateway acknowledged before it and none sent after it returned."""
    from tests.fixtures.cluster import data_client
    nblocks = 256
    aio.client().create_volume('busy', 8 * MiB, chunk_size=MiB)
    s, _, _ = connect(aio, 'busy')
    stop = threading.Event()
    log = []  # (sent at, acked at, block, value)

    def writer():
        value = 0
        while not stop.is_set():
            value += 1
            block = (value * 11) % nblocks
            sent = time.monotonic()
            err, _ = request(s, p.CMD_WRITE, block * 4096, 4096, handle=value,
                             data=value.to_bytes(8, 'big') * 512)
            assert err == 0
            log.append((sent, time.monotonic(), block, value))
    t = threading.Thread(target=writer)
    t.start()
    try:
        with data_client(aio) as cl:
            time.sleep(0.5)
            before = time.monotonic()
            cl.create_snapshot('busy', 'instant')
            after = time.monotonic()
            time.sleep(0.5)
            stop.set()
            t.join()
            with cl.open_volume('busy@instant', writable=False) as snap:
                data = snap.read(0, nblocks * 4096)
    finally:
        stop.set()
        s.close()
    assert len(log) > 100 and any(sent > after for sent, *_ in log)
    seen = [int.from_bytes(data[b * 4096:b * 4096 + 8], 'big')
            for b in range(nblocks)]
    for sent, acked, block, value in log:
        if acked < before:
            assert seen[block] >= value, 'acknowledged write %d lost' % value
        if sent > after:
            assert seen[block] < value, 'write %d leaked in' % value


# --- TLS ---------------------------------------------------------------------

def make_pki(d):
    """A CA, and a server certificate for 127.0.0.1 signed by it, laid out
    as libnbd's tls-certificates= and QEMU's tls-creds-x509 dir= expect."""
    need('openssl')
    d.mkdir()

    def ossl(*args):
        run('openssl', *args)
    ossl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
         '-subj', '/CN=ursa test CA', '-keyout', str(d / 'ca-key.pem'),
         '-out', str(d / 'ca-cert.pem'))
    ossl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1',
         '-keyout', str(d / 'server-key.pem'), '-out', str(d / 'server.csr'))
    (d / 'ext.cnf').write_text('subjectAltName=IP:127.0.0.1,DNS:localhost\n'
                               'extendedKeyUsage=serverAuth,clientAuth\n')
    ossl('x509', '-req', '-in', str(d / 'server.csr'), '-CA',
         str(d / 'ca-cert.pem'), '-CAkey', str(d / 'ca-key.pem'),
         '-CAcreateserial', '-days', '2', '-extfile', str(d / 'ext.cnf'),
         '-out', str(d / 'server-cert.pem'))
    return d


def test_tls_required_with_x509(tmp_path):
    need('nbdinfo')
    need('qemu-img')
    pki = make_pki(tmp_path / 'pki')
    c = AllInOne(str(tmp_path / 'tls'), 3, port_base=0, server_timeout=3.0,
                 extra_conf='[ursa_nbd]\ntls = required\n'
                            'tls_cert_file = %s\ntls_key_file = %s\n' % (
                                pki / 'server-cert.pem',
                                pki / 'server-key.pem'))
    c.start(nbd=True)
    try:
        c.client().create_volume('secret', 8 * MiB, chunk_size=4 * MiB)
        # Without TLS: refused with a reason, no data.
        r = subprocess.run(['nbdinfo', uri(c, 'secret')],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0
        # With TLS, verified against our CA: libnbd and QEMU both work.
        tls_uri = 'nbds://127.0.0.1:%d/secret?tls-certificates=%s' % (
            c.nbd_port, pki)
        info = json.loads(run('nbdinfo', '--json', tls_uri))
        assert info['exports'][0]['export-size'] == 8 * MiB
        src = tmp_path / 'src.raw'
        src.write_bytes(os.urandom(8 * MiB))
        image_opts = ('driver=raw,file.driver=nbd,file.host=127.0.0.1,'
                      'file.port=%d,file.export=secret,file.tls-creds=tls0'
                      % c.nbd_port)
        obj = 'tls-creds-x509,id=tls0,dir=%s,endpoint=client' % pki
        run('qemu-img', 'convert', '-n', '--object', obj,
            '--target-image-opts', '-f', 'raw', str(src), image_opts)
        run('qemu-img', 'compare', '--object', obj, '--image-opts',
            'driver=file,filename=%s' % src, image_opts)
    finally:
        c.stop(kill=True)

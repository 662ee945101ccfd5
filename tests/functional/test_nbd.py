"""ursa-nbd against real NBD clients: qemu-img, qemu-io, nbdinfo, nbdcopy,
fio.  Under CI=true a missing client is a failure, elsewhere a skip."""

import json
import os
import shutil
import socket
import struct
import subprocess

import pytest

from cinder_ursa.cmd.aio import AllInOne
from cinder_ursa.nbd import protocol as p

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
    c = AllInOne(str(tmp_path_factory.mktemp('nbd')), 3, port_base=0,
                 server_timeout=3.0)
    c.start(nbd=True)
    try:
        yield c
    finally:
        c.stop()


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
    assert request(s, p.CMD_READ, 8 * MiB - 10, 20)[0] == p.EINVAL
    assert request(s, p.CMD_WRITE, 8 * MiB, 4096,
                   data=b'x' * 4096)[0] == p.ENOSPC
    assert request(s, p.CMD_READ, 0, 64 * MiB)[0] == p.EINVAL
    assert request(s, 99, 0, 0)[0] == p.EINVAL
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

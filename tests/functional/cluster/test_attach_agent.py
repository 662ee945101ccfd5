"""ursa-attach with real FUSE (root and /dev/fuse): who may open the
volume files, and how the agent stops.

The mount has ``allow_other`` (the hypervisor's QEMU user opens the
files), so without ``default_permissions`` FUSE would let every local user
read and write every attached volume.  Here the files belong to
``[ursa_attach] owner`` and ``group`` and only they (and root) get in.
"""

import errno
import os
import signal
import tempfile
import time

import pytest

from cinder_ursa.common import auth
from tests.fixtures.cluster import data_client

OWNER = 4343     # numbers that need no /etc/passwd or /etc/group entry
GROUP = 4242
STRANGER = 65534  # nobody
MiB = 1 << 20


@pytest.fixture
def attach_cluster(make_cluster):
    if not os.path.exists('/dev/fuse') or os.geteuid() != 0:
        if os.environ.get('CI'):
            pytest.fail('ursa-attach needs root and /dev/fuse')
        pytest.skip('ursa-attach needs root and /dev/fuse')
    c = make_cluster(1, extra_conf='[ursa_attach]\nowner = %d\ngroup = %d\n'
                     % (OWNER, GROUP))
    # The test's own directories are root's alone (0700), which would
    # keep the other users out whatever the mount allows: mount where
    # anyone may look, as /var/lib/ursa/attach is.
    top = tempfile.mkdtemp(prefix='ursa-attach-')
    os.chmod(top, 0o755)
    c.attach_dir = os.path.join(top, 'attached')
    c.write_config()
    c.start_attach()
    yield c
    c.stop(kill=True)
    os.rmdir(c.attach_dir)
    os.rmdir(top)


def as_user(uid, gid, path, flags):
    """errno of os.open(path, flags) as ``uid``:``gid`` with no other
    group (0 if it opened), in a child process, or the bytes read."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            try:
                fd = os.open(path, flags)
            except OSError as e:
                os.write(w, b'E%d' % e.errno)
            else:
                if flags == os.O_RDONLY:
                    os.write(w, b'D' + os.read(fd, 16))
                else:
                    os.write(w, b'W%d' % os.pwrite(fd, b'mine', MiB))
                os.close(fd)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, 'rb') as f:
        out = f.read()
    os.waitpid(pid, 0)
    if out.startswith(b'E'):
        return int(out[1:])
    return out


def attached_path(cluster, name):
    master = cluster.client()
    master.attach(name, cluster.attach_host)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        a = master.attachment(name, cluster.attach_host)
        if a['status'] == 'attached':
            return a['path']
        assert a['status'] == 'attaching', a
        time.sleep(0.1)
    raise AssertionError('volume %s not attached' % name)


def test_only_the_owner_and_group_open_the_volume_files(attach_cluster):
    c = attach_cluster
    c.client().create_volume('secret', 8 * MiB, replicas=1)
    path = attached_path(c, 'secret')
    st = os.stat(path)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (OWNER, GROUP,
                                                           0o660)
    with open(path, 'r+b') as f:
        f.write(b'top secret data!')
    # Any other local user: refused by the kernel, for reading and for
    # writing, before the agent sees the open.
    for flags in (os.O_RDONLY, os.O_WRONLY, os.O_RDWR):
        assert as_user(STRANGER, STRANGER, path, flags) == errno.EACCES
    # The owner, and a member of the group, read and write.
    assert as_user(OWNER, STRANGER, path, os.O_RDONLY) == (
        b'Dtop secret data!')
    assert as_user(STRANGER, GROUP, path, os.O_RDWR) == b'W4'
    with open(path, 'rb') as f:
        f.seek(MiB)
        assert f.read(4) == b'mine'
    # Anyone may list the directory (the names are not the secret).
    assert 'secret' in os.listdir(c.attach_dir)


def test_sigterm_unmounts_and_exits_cleanly(attach_cluster):
    c = attach_cluster
    c.client().create_volume('busy', 8 * MiB, replicas=1)
    path = attached_path(c, 'busy')
    with open(path, 'r+b') as f:
        f.write(b'x' * 4096)  # written, not yet flushed by anyone
    assert os.path.ismount(c.attach_dir)
    c.attach_proc.send_signal(signal.SIGTERM)
    assert c.attach_proc.wait(30) == 0
    with open(os.path.join(c.data_dir, 'attach.log')) as f:
        log = f.read()
    assert 'Traceback' not in log and 'RuntimeError' not in log, log
    assert 'SIGTERM received, unmounting' in log
    assert not os.path.ismount(c.attach_dir)
    # It closed the volume: flushed, lease released.
    assert not c.client().volume('busy')['lease']['holder']


def test_ursa_attach_without_the_cluster_key(make_cluster, tmp_path):
    """ursa-attach signing as its host's principal, with no cluster key:
    the volume attached to the host is served from the tickets of its
    lease, reads and writes reach the chunk servers."""
    if not os.path.exists('/dev/fuse') or os.geteuid() != 0:
        if os.environ.get('CI'):
            pytest.fail('ursa-attach needs root and /dev/fuse')
        pytest.skip('ursa-attach needs root and /dev/fuse')
    c = make_cluster(3)
    key = auth.new_key()
    key_file = str(tmp_path / 'host.key')
    auth.write_key_file(key_file, key)
    c.client().create_principal(c.attach_host, 'host', key)
    c.service_extra_conf['attach'] = (
        '[ursa]\ncluster_key_file =\nprincipal = %s\nprincipal_key_file = '
        '%s\n' % (c.attach_host, key_file))
    c.attach_dir = str(tmp_path / 'attached')
    c.write_config()
    c.start_attach()
    c.client().create_volume('vm', 8 * MiB)
    path = attached_path(c, 'vm')
    with open(path, 'r+b') as f:
        f.write(b'keyless' * 100)
        f.flush()
        os.fsync(f.fileno())
    with open(os.path.join(c.data_dir, 'attach.log')) as f:
        assert 'No cluster key' in f.read()
    with data_client(c) as cl:
        with cl.open_volume('vm', writable=False) as v:
            assert v.read(0, 700) == b'keyless' * 100

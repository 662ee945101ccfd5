"""Host-side attach: expose the volumes the master attached to this host as
files of a FUSE filesystem (``<mount_dir>/<volume name>``).

This is what gives Cinder (and os-brick's ``local`` connector, so
cinder-backup, generic migration and image copies through attach) a stable
local path for an Ursa volume on hosts without a kernel NBD module.  Where
``nbd`` exists, the same volumes are reachable by ``nbd-client`` or QEMU
through ``ursa-nbd``.

The agent polls the master for this host's attachments:

* ``attaching`` (or ``attached`` after a restart of the agent): open the
  volume for writing (the lease holder is ``ursa-attach@<host>``), add its
  file, report ``attached`` with the path (or ``error`` with the reason);
* ``detaching``: flush, close (the lease is released), remove the file,
  delete the attachment;
* a volume open here whose attachment is gone: flush and close it.

Reads and writes of a file go straight to the volume (no cache);
``fsync`` flushes it (every replica durable); truncating is ignored, as
for a block device.
"""

import errno
import logging
import os
import stat
import threading
import time

import mfusepy

from cinder_ursa import exception

LOG = logging.getLogger(__name__)


class AttachFS(mfusepy.Operations):
    """A flat directory with one file per attached volume."""

    use_ns = False

    def __init__(self):
        self.volumes = {}  # file name -> SyncVolume
        self._lock = threading.Lock()
        self.started = time.time()
        self.on_mount = None

    def add(self, name, vol):
        with self._lock:
            self.volumes[name] = vol

    def remove(self, name):
        with self._lock:
            return self.volumes.pop(name, None)

    def _vol(self, path):
        vol = self.volumes.get(path.lstrip('/'))
        if vol is None:
            raise mfusepy.FuseOSError(errno.ENOENT)
        return vol

    # --- FUSE operations ----------------------------------------------------

    def init(self, path):
        if self.on_mount is not None:
            self.on_mount()

    def getattr(self, path, fh=None):
        base = {'st_uid': 0, 'st_gid': 0, 'st_atime': self.started,
                'st_mtime': self.started, 'st_ctime': self.started}
        if path == '/':
            return dict(base, st_mode=stat.S_IFDIR | 0o755, st_nlink=2)
        vol = self._vol(path)
        return dict(base, st_mode=stat.S_IFREG | 0o600, st_nlink=1,
                    st_size=vol.size, st_blksize=4096,
                    st_blocks=vol.size // 512)

    def readdir(self, path, fh):
        with self._lock:
            return ['.', '..'] + sorted(self.volumes)

    def open(self, path, flags):
        self._vol(path)
        return 0

    def read(self, path, size, offset, fh):
        vol = self._vol(path)
        size = max(0, min(size, vol.size - offset))
        if not size:
            return b''
        return self._io(vol.read, offset, size)

    def write(self, path, data, offset, fh):
        vol = self._vol(path)
        if offset + len(data) > vol.size:
            raise mfusepy.FuseOSError(errno.ENOSPC)
        self._io(vol.write, offset, bytes(data))
        return len(data)

    def truncate(self, path, length, fh=None):
        self._vol(path)  # a block device: its size does not change
        return 0

    def flush(self, path, fh):
        return 0

    def fsync(self, path, datasync, fh):
        self._io(self._vol(path).flush)
        return 0

    def release(self, path, fh):
        return 0

    def statfs(self, path):
        return {'f_bsize': 4096, 'f_frsize': 4096, 'f_namemax': 255}

    @staticmethod
    def _io(fn, *args):
        try:
            return fn(*args)
        except exception.UrsaError as e:
            LOG.error('I/O on an attached volume failed: %s', e)
            raise mfusepy.FuseOSError(errno.EIO) from e


class Agent:
    """Reconciles this host's attachments with the open volumes."""

    def __init__(self, master, cluster, fs, host, mount_dir,
                 poll_interval=1.0):
        self.master = master        # client.master.MasterClient
        self.cluster = cluster      # sync.SyncCluster
        self.fs = fs
        self.host = host
        self.mount_dir = mount_dir
        self.poll_interval = poll_interval
        self.holder = 'ursa-attach@%s' % host
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            try:
                self.reconcile()
            except exception.UrsaError as e:
                LOG.warning('Attachments of host %s: %s', self.host, e)
            except Exception:  # noqa: BLE001 - keep the agent alive
                LOG.exception('Attachment reconciliation failed')
            self.stopping.wait(self.poll_interval)

    def reconcile(self):
        rows = self.master.attachments(host=self.host)
        wanted = set()
        for a in rows:
            name = a['volume_name']
            if a['status'] == 'detaching':
                self._close(name)
                self.master.detach(a['volume_id'], self.host)
                continue
            wanted.add(name)
            if name not in self.fs.volumes and a['status'] != 'error':
                self._open(a)
        for name in set(self.fs.volumes) - wanted:
            LOG.info('Volume %s is no longer attached to %s', name,
                     self.host)
            self._close(name)

    def _report(self, a, status, path=None, error=None):
        self.master.update_attachment(a['volume_id'], self.host, status,
                                      path, error)

    def _open(self, a):
        name = a['volume_name']
        try:
            vol = self.cluster.open_volume(a['volume_id'], writable=True,
                                           holder=self.holder)
        except exception.UrsaError as e:
            LOG.error('Cannot attach volume %s: %s', name, e)
            self._report(a, 'error', error=str(e))
            return
        self.fs.add(name, vol)
        path = os.path.join(self.mount_dir, name)
        LOG.info('Volume %s attached at %s', name, path)
        self._report(a, 'attached', path=path)

    def _close(self, name):
        vol = self.fs.remove(name)
        if vol is None:
            return
        try:
            vol.close()  # flushes, then releases the lease
            LOG.info('Volume %s detached from %s', name, self.host)
        except exception.UrsaError as e:
            LOG.warning('Closing volume %s: %s (its lease expires by '
                        'itself)', name, e)

    def close_all(self):
        for name in list(self.fs.volumes):
            self._close(name)

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
  file, report ``attached`` with the path (or ``error`` with the reason).
  A ``standby`` attachment (a live migration's destination, attached
  while the source host still writes) is opened without the lease
  (``lease='on-write'``): it reads at once, and its first write asks the
  source for the lease (a handover);
* ``release_requested`` on the attachment of a volume open here (this
  host is a live migration's source, and the destination asked for the
  lease): hand it over (flush, release: ``Volume.hand_over``), in a
  thread of its own so the other attachments are not kept waiting;
* ``detaching``: flush, close (the lease is released), remove the file,
  delete the attachment;
* a volume open here whose attachment is gone: flush and close it.

Reads and writes of a file go straight to the volume (no cache);
``fsync`` flushes it (every replica durable); truncating is ignored, as
for a block device; ``fallocate`` punching a hole or zeroing a range
zeroes it in the volume (the blocks are deallocated: restores and
``blkdiscard``-like tools zero gigabytes without sending them).

Who may open a volume: the mount has ``allow_other`` because the
hypervisor's QEMU user, not root, opens the files; so it also has
``default_permissions``, which makes the kernel check each open against
the owner, group and mode ``getattr`` reports (``[ursa_attach] owner`` and
``group``; 0600, or 0660 with a group).  Without it FUSE checks nothing
and any local user could read and write every attached volume.
"""

import ctypes
import errno
import grp
import logging
import os
import pwd
import stat
import threading
import time
from time import perf_counter

import mfusepy

from cinder_ursa import exception
from cinder_ursa.attach import metrics as metrics_mod

LOG = logging.getLogger(__name__)

# fallocate(2) modes (linux/falloc.h).
FALLOC_KEEP_SIZE = 0x01
FALLOC_PUNCH_HOLE = 0x02
FALLOC_ZERO_RANGE = 0x10


def file_owner(owner='root', group=None):
    """(uid, gid, mode) of the volume files for ``[ursa_attach] owner``
    and ``group`` (names or numbers): mode 0600 for the owner alone, 0660
    when a group is given.  ValueError says which one is unknown."""
    try:
        uid = int(owner) if owner.isdigit() else pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise ValueError('[ursa_attach] owner: no user %r on this host; '
                         'give a user name or number (the hypervisor\'s '
                         'QEMU user, e.g. libvirt-qemu or qemu)' % owner)
    if not group:
        return uid, 0, 0o600
    try:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError('[ursa_attach] group: no group %r on this host; '
                         'give a group name or number, or leave it unset '
                         'for the owner alone' % group)
    return uid, gid, 0o660


class AttachFS(mfusepy.Operations):
    """A flat directory with one file per attached volume, owned by
    ``uid``:``gid`` with ``mode`` (enforced by the kernel: see the
    module's doc)."""

    use_ns = False

    def __init__(self, uid=0, gid=0, mode=0o600, metrics=None):
        self.volumes = {}  # file name -> SyncVolume
        self.metrics = metrics or metrics_mod.AttachMetrics()
        self._lock = threading.Lock()
        self.started = time.time()
        self.on_mount = None
        self.uid, self.gid, self.mode = uid, gid, mode
        # libfuse's struct fuse of this mount, set once it is up: what
        # fuse_exit() needs to end the loop from outside a FUSE thread.
        self.fuse_handle = None
        self.mounted = threading.Event()

    def exit(self):
        """Make the FUSE loop end at its next wake-up (the caller wakes
        it: see cmd/attach.py).  False if the mount is not up yet."""
        if self.fuse_handle is None:
            return False
        # mfusepy.fuse_exit() finds the handle through fuse_get_context(),
        # which only works in a FUSE thread; this is its body with the
        # handle kept by init().
        mfusepy._libfuse.fuse_exit(self.fuse_handle)
        return True

    def add(self, name, vol):
        with self._lock:
            self.volumes[name] = vol

    def remove(self, name):
        with self._lock:
            return self.volumes.pop(name, None)

    def snapshot(self):
        """The volumes served now (from any thread)."""
        with self._lock:
            return list(self.volumes.values())

    def _vol(self, path, op=None, t0=None):
        """The volume of ``path``; ENOENT, counted as an ``op`` request
        failed when one is given."""
        vol = self.volumes.get(path.lstrip('/'))
        if vol is None:
            if op is not None:
                self.metrics.io_done(op, perf_counter() - t0, 0, 'ENOENT')
            raise mfusepy.FuseOSError(errno.ENOENT)
        return vol

    # --- FUSE operations ----------------------------------------------------

    def init(self, path):
        self.fuse_handle = ctypes.c_void_p(
            mfusepy._libfuse.fuse_get_context().contents.fuse)
        self.mounted.set()
        if self.on_mount is not None:
            self.on_mount()

    def getattr(self, path, fh=None):
        base = {'st_atime': self.started, 'st_mtime': self.started,
                'st_ctime': self.started}
        if path == '/':
            # Anyone may list the names (as in /dev); opening a volume
            # is what the file's owner, group and mode restrict.
            return dict(base, st_mode=stat.S_IFDIR | 0o755, st_nlink=2,
                        st_uid=0, st_gid=0)
        vol = self._vol(path)
        return dict(base, st_mode=stat.S_IFREG | self.mode, st_nlink=1,
                    st_uid=self.uid, st_gid=self.gid,
                    st_size=vol.size, st_blksize=4096,
                    st_blocks=vol.size // 512)

    def readdir(self, path, fh):
        with self._lock:
            return ['.', '..'] + sorted(self.volumes)

    def open(self, path, flags):
        self._vol(path)
        return 0

    def read(self, path, size, offset, fh):
        t0 = perf_counter()
        vol = self._vol(path, 'read', t0)
        size = max(0, min(size, vol.size - offset))
        if not size:
            self.metrics.io_done('read', perf_counter() - t0)
            return b''
        return self._io('read', t0, size, vol.read, offset, size)

    def write(self, path, data, offset, fh):
        t0 = perf_counter()
        vol = self._vol(path, 'write', t0)
        if offset + len(data) > vol.size:
            self.metrics.io_done('write', perf_counter() - t0, 0, 'ENOSPC')
            raise mfusepy.FuseOSError(errno.ENOSPC)
        self._io('write', t0, len(data), vol.write, offset, bytes(data))
        return len(data)

    def fallocate(self, path, mode, offset, length, fh):
        """FALLOC_FL_PUNCH_HOLE (with KEEP_SIZE, as Linux requires) or
        FALLOC_FL_ZERO_RANGE: the range is zeroed in the volume.  A plain
        allocation has nothing to do on a thin volume of fixed size."""
        t0 = perf_counter()
        vol = self._vol(path, 'write', t0)
        if mode & ~(FALLOC_KEEP_SIZE | FALLOC_PUNCH_HOLE | FALLOC_ZERO_RANGE):
            raise mfusepy.FuseOSError(errno.EOPNOTSUPP)
        end = offset + length
        if end > vol.size:
            if not mode & FALLOC_KEEP_SIZE:
                # It would grow the file: a volume's size is fixed.
                self.metrics.io_done('write', perf_counter() - t0, 0,
                                     'ENOSPC')
                raise mfusepy.FuseOSError(errno.ENOSPC)
            end = vol.size
        if mode & (FALLOC_PUNCH_HOLE | FALLOC_ZERO_RANGE) and end > offset:
            self._io('write', t0, 0, vol.write_zeroes, offset,
                     end - offset)
        return 0

    def truncate(self, path, length, fh=None):
        self._vol(path)  # a block device: its size does not change
        return 0

    def flush(self, path, fh):
        return 0

    def fsync(self, path, datasync, fh):
        t0 = perf_counter()
        self._io('flush', t0, 0, self._vol(path, 'flush', t0).flush)
        return 0

    def release(self, path, fh):
        return 0

    def statfs(self, path):
        return {'f_bsize': 4096, 'f_frsize': 4096, 'f_namemax': 255}

    def _io(self, op, t0, nbytes, fn, *args):
        """``fn(*args)``, counted as an ``op`` request of ``nbytes`` that
        started at ``t0``; an Ursa error is EIO to the reader."""
        try:
            out = fn(*args)
        except exception.UrsaError as e:
            self.metrics.io_done(op, perf_counter() - t0, 0, e)
            LOG.error('I/O on an attached volume failed: %s', e)
            raise mfusepy.FuseOSError(errno.EIO) from e
        except Exception as e:
            self.metrics.io_done(op, perf_counter() - t0, 0, e)
            raise
        self.metrics.io_done(op, perf_counter() - t0, nbytes)
        return out


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
        # Volume file name -> the thread handing its lease over.
        self._handing = {}

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
                self._detach(a)
                continue
            wanted.add(name)
            if name not in self.fs.volumes and a['status'] != 'error':
                self._open(a)
            elif a.get('release_requested') and name in self.fs.volumes:
                self._hand_over_soon(name)
        for name in set(self.fs.volumes) - wanted:
            LOG.info('Volume %s is no longer attached to %s', name,
                     self.host)
            t0 = perf_counter()
            ok = self._close(name)
            self.fs.metrics.operation('drop', perf_counter() - t0, ok)

    def _detach(self, a):
        """Close the volume of a detaching attachment, then delete it."""
        t0 = perf_counter()
        ok = False
        try:
            closed = self._close(a['volume_name'])
            self.master.detach(a['volume_id'], self.host)
            ok = closed
        finally:
            self.fs.metrics.operation('detach', perf_counter() - t0, ok)

    def _hand_over_soon(self, name):
        """Hand volume ``name``'s lease over to the live migration's
        destination that asked for it, in a thread (it waits for the
        writes in flight and flushes): once at a time per volume; a
        request still there at a later look after that is tried again
        (a flush that failed)."""
        running = self._handing.get(name)
        if running is not None and running.is_alive():
            return
        vol = self.fs.volumes.get(name)
        if vol is None:
            return
        t = threading.Thread(target=self._hand_over, args=(name, vol),
                             name='hand-over-%s' % name, daemon=True)
        self._handing[name] = t
        t.start()

    def _hand_over(self, name, vol):
        t0 = perf_counter()
        ok = False
        LOG.info('Volume %s: the master asks host %s to hand its lease '
                 'over (live migration): flushing and releasing it', name,
                 self.host)
        try:
            done = vol.hand_over()
            ok = True
            if done:
                LOG.info('Volume %s: lease handed over in %.3f s; writes '
                         'here would ask for it back', name,
                         perf_counter() - t0)
            else:
                LOG.info('Volume %s: no lease held here to hand over', name)
        except exception.UrsaError as e:
            LOG.error('Volume %s: handing the lease over failed (%s); '
                      'tried again at the next look while asked, else the '
                      'master takes it by force', name, e)
        except Exception:  # noqa: BLE001 - keep the agent alive
            LOG.exception('Volume %s: handing the lease over failed', name)
        finally:
            self.fs.metrics.operation('handover', perf_counter() - t0, ok)

    def _report(self, a, status, path=None, error=None):
        self.master.update_attachment(a['volume_id'], self.host, status,
                                      path, error)

    def _open(self, a):
        t0 = perf_counter()
        ok = False
        try:
            ok = self._attach(a)
        finally:
            self.fs.metrics.operation('attach', perf_counter() - t0, ok)

    def _attach(self, a):
        """Open the volume of attachment ``a`` and report it; whether it
        is served."""
        name = a['volume_name']
        # A live migration's destination: its first write takes the lease.
        lease = 'on-write' if a.get('standby') else 'eager'
        try:
            vol = self.cluster.open_volume(a['volume_id'], writable=True,
                                           holder=self.holder, lease=lease)
        except exception.UrsaError as e:
            LOG.error('Cannot attach volume %s: %s', name, e)
            self._report(a, 'error', error=str(e))
            return False
        self.fs.add(name, vol)
        path = os.path.join(self.mount_dir, name)
        LOG.info('Volume %s attached at %s%s', name, path,
                 ' as a standby (live migration: its lease is taken at the '
                 'first write)' if lease == 'on-write' else '')
        self._report(a, 'attached', path=path)
        return True

    def _close(self, name):
        """Stop serving ``name``, flush and close its volume; False if
        that failed (True: closed, or not served)."""
        vol = self.fs.remove(name)
        if vol is None:
            return True
        try:
            vol.close()  # flushes, then releases the lease
            LOG.info('Volume %s detached from %s', name, self.host)
        except exception.UrsaError as e:
            LOG.warning('Closing volume %s: %s (its lease expires by '
                        'itself)', name, e)
            return False
        return True

    def close_all(self):
        for name in list(self.fs.volumes):
            self._close(name)

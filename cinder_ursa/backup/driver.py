"""Cinder backup driver for Ursa: incremental backups that read only what
changed.

Loaded by an unmodified cinder-backup with::

    [DEFAULT]
    backup_driver = cinder_ursa.backup.driver.UrsaBackupDriver
    backup_ursa_master_urls = http://backup-master:9380
    backup_ursa_cluster_key_file = /etc/ursa/backup-cluster.key

Layout.  The backups of a volume are snapshots of one volume of the
backup cluster (a second cluster, or the volumes' own), its *chain*
``volume-<id>.backups``: backup ``B`` is its snapshot ``backup-<B>``.
Snapshots are independent for reading and deleting, and share the
blocks they did not change.  The volume's own metadata (Cinder's
``get_metadata``) goes with each backup, in a small volume
``volume-<id>.backup-<B>.meta``.

Backup.  The driver snapshots the source volume (``backup-<B>.base``, on
the volumes' cluster; a backup of a Cinder snapshot reads that snapshot
instead), so what it copies is one point in time, in use or not.  An
incremental backup copies only the extents that changed between the
parent backup's base snapshot and this one (the chunk servers name them
from their block metadata: :mod:`cinder_ursa.client.diff`) onto the
chain, reverted first to the parent's snapshot; a full backup copies
every extent of data, and zeroes the rest of a chain that already
existed.  The chain is then snapshotted, and only the newest base
snapshot is kept on the source volume (the driver deletes it with the
volume: :class:`cinder_ursa.volume.driver.UrsaDriver`).  An incremental
whose parent's base is gone (the parent was a snapshot's backup, or it
was deleted) copies everything, as a full one does.

Restore.  The chain's snapshot of the backup is read, extents of data
only, and written to the file Cinder attached (any backend's volume);
onto an existing volume the rest is zeroed (punched through the
attachment, where it can).  Any failure leaves no snapshot or base
behind it, and the backup goes to error as Cinder does with it.
"""

import asyncio
import ctypes
import ctypes.util
import errno
import json
import os
import stat
import sys
import time

from cinder import exception as cinder_exc
from cinder import interface
from cinder import objects
from cinder.backup import driver
from cinder.i18n import _
from cinder.objects import fields
from oslo_config import cfg
from oslo_log import log as logging

from cinder_ursa import exception
from cinder_ursa.backup.naming import BASE
from cinder_ursa.backup.naming import CHAIN
from cinder_ursa.backup.naming import META
from cinder_ursa.backup.naming import POINT
from cinder_ursa.backup.naming import base_snapshots
from cinder_ursa.backup.opts import backup_opts
from cinder_ursa.client import cluster as cluster_mod
from cinder_ursa.client import diff as diff_mod
from cinder_ursa.client import master as master_mod
from cinder_ursa.client import sync
from cinder_ursa.common import auth
from cinder_ursa.common import units
from cinder_ursa.volume.opts import ursa_opts

LOG = logging.getLogger(__name__)

CONF = cfg.CONF
CONF.register_opts(backup_opts)

PIECE = 4 * units.Mi
BATCH = 8                           # restore: pieces read at once
PROGRESS_EVERY = 10.0               # seconds between progress lines

# fallocate(2) (linux/falloc.h): punch holes in the restore target.
_FALLOC_PUNCH = 0x02 | 0x01         # PUNCH_HOLE | KEEP_SIZE


class _Progress:
    """Log lines of a long copy: every PROGRESS_EVERY seconds, and at
    the end."""

    def __init__(self, what, total):
        self.what, self.total = what, total
        self.done = 0
        self.start = self._last = time.monotonic()

    def __call__(self, n):
        self.done += n
        now = time.monotonic()
        if now - self._last >= PROGRESS_EVERY:
            self._last = now
            self.log()

    def log(self, final=False):
        took = max(time.monotonic() - self.start, 1e-6)
        LOG.info('%(what)s: %(done)s of %(total)s%(pct)s, %(rate)s/s%(end)s',
                 {'what': self.what, 'done': units.format_size(self.done),
                  'total': units.format_size(self.total),
                  'pct': ' (%d%%)' % (100 * self.done // self.total)
                  if self.total else '',
                  'rate': units.format_size(int(self.done / took)),
                  'end': ', done in %.1f s' % took if final else ''})


@interface.backupdriver
class UrsaBackupDriver(driver.BackupDriver):
    """Backups of Ursa volumes in an Ursa cluster, incrementals from the
    chunk servers' block metadata (see the module)."""

    def __init__(self, context):
        super().__init__(context)
        conf = CONF
        self.urls = conf.backup_ursa_master_urls
        self.timeout = conf.backup_ursa_timeout
        self._key = self._load_key(conf.backup_ursa_cluster_key_file,
                                   'backup_ursa_cluster_key_file')
        self._master = master_mod.MasterClient(self.urls, self._key,
                                               timeout=self.timeout)
        # What the last backup() read and wrote (tests, logs).
        self.last_transfer = None

    @staticmethod
    def _load_key(path, option):
        try:
            return auth.load_key(path)
        except (OSError, exception.UrsaError) as e:
            raise cinder_exc.BackupDriverException(
                _('Cannot read the Ursa cluster key from %(f)s (option '
                  '%(o)s): %(e)s') % {'f': path, 'o': option, 'e': e}
            ) from e

    def check_for_setup_error(self):
        try:
            status = self._master.cluster_status()
        except exception.UrsaError as e:
            raise cinder_exc.BackupDriverException(
                _('Cannot reach the Ursa backup cluster at %(urls)s '
                  '(backup_ursa_master_urls): %(e)s')
                % {'urls': ', '.join(self.urls), 'e': e}) from e
        LOG.info('Ursa backup cluster at %(urls)s: %(health)s, %(up)d '
                 'chunk server(s) up', {'urls': ', '.join(self.urls),
                                        'health': status['health'],
                                        'up': status['servers']['up']})

    # --- the volumes' cluster ------------------------------------------

    def _source(self, volume):
        """(master URLs, cluster key) of the cluster ``volume`` is on: the
        backup_ursa_source_* options, or its backend section in this
        cinder.conf, or the backup cluster; None when that section
        names another volume driver (the volume is not Ursa's)."""
        urls = CONF.backup_ursa_source_master_urls
        key_file = CONF.backup_ursa_source_cluster_key_file
        backend = (volume.host or '').partition('@')[2].partition('#')[0]
        if backend and backend in CONF.list_all_sections():
            for opts in (ursa_opts, [cfg.StrOpt('volume_driver')]):
                try:
                    CONF.register_opts(opts, group=backend)
                except cfg.DuplicateOptError:
                    pass
            group = CONF[backend]
            if group.volume_driver and \
                    'cinder_ursa' not in group.volume_driver:
                return None
            urls = urls or group.ursa_master_urls
            key_file = key_file or group.ursa_cluster_key_file
        if not urls:
            return self.urls, self._key
        if not key_file:
            key_file = CONF.backup_ursa_cluster_key_file
        return urls, self._load_key(key_file,
                                    'backup_ursa_source_cluster_key_file')

    def _guard(self, what):
        """Ursa errors as Cinder's backup errors, saying what failed."""
        return _Translated(what, self.urls)

    # --- backup ----------------------------------------------------------

    def backup(self, backup, volume_file, backup_metadata=True):
        volume = objects.Volume.get_by_id(self.context, backup.volume_id)
        source = self._source(volume)
        urls, key = source or (None, None)
        src = master_mod.MasterClient(urls, key, timeout=self.timeout) \
            if source else None
        chain = CHAIN % volume.name
        point = POINT % backup.id
        what = _('Backup %(b)s of volume %(v)s') % {'b': backup.id,
                                                     'v': volume.id}
        with self._guard(what):
            on_ursa = src is not None and self._on_ursa(src, volume)
            # One backup of a chain at a time, across cinder-backup
            # processes and hosts: each reverts the chain's head to its
            # parent and snapshots what it wrote there.
            with self._chain_lock(chain):
                if on_ursa:
                    base = self._backup_ursa(backup, volume, src, urls, key,
                                             chain, point, what,
                                             backup_metadata)
                else:
                    base = None
                    self._backup_file(backup, volume, volume_file, chain,
                                      point, what, backup_metadata)
            if base is not None:
                self._keep_newest_base(src, volume, base)
        t = self.last_transfer
        LOG.info('%(what)s done: %(kind)s, %(read)s read, %(written)s '
                 'written to %(chain)s@%(point)s', {
                     'what': what, 'kind': t['kind'],
                     'read': units.format_size(t['read']),
                     'written': units.format_size(t['written']),
                     'chain': chain, 'point': point})
        # 'id': the backup id its data is named after, so a record
        # imported under another id (backup-import) still finds it.
        return {'service_metadata': json.dumps(
            {'chain': chain, 'base': base, 'id': backup.id},
            sort_keys=True)}

    @staticmethod
    def _on_ursa(src, volume):
        """Whether the volume is an Ursa volume of the volumes' cluster
        (else cinder-backup serves another backend's: its attached
        device is read)."""
        try:
            src.volume(volume.name)
        except exception.NotFound:
            return False
        return True

    def _chain_lock(self, chain):
        from cinder import coordination
        return coordination.COORDINATOR.get_lock('ursa-backup-%s' % chain)

    def _backup_ursa(self, backup, volume, src, urls, key, chain, point,
                     what, backup_metadata):
        """Copy from the volumes' cluster; returns the new base snapshot's
        name (None for a backup of a Cinder snapshot)."""
        base = None
        made = []               # (master, ref) of the snapshots made
        if backup.snapshot_id:
            snap = objects.Snapshot.get_by_id(self.context,
                                              backup.snapshot_id)
            state = '%s@%s' % (volume.name, snap.name)
        else:
            base = BASE % backup.id
            src.create_snapshot(volume.name, base)
            made.append((src, '%s@%s' % (volume.name, base)))
            state = '%s@%s' % (volume.name, base)
        try:
            parent = self._parent(backup)
            with sync.SyncCluster(urls, key, io_timeout=self.timeout) as cl:
                self.last_transfer = cl.run(
                    self._transfer, volume.name, state, parent, chain, what)
            self._finish(backup, volume, chain, point, made,
                         backup_metadata)
        except BaseException:
            self._undo(backup, volume, made, backup_metadata)
            raise
        return base

    def _backup_file(self, backup, volume, volume_file, chain, point, what,
                     backup_metadata):
        """A volume of another backend: read in full from the device
        Cinder attached; onto the chain (reverted to the parent) only the
        pieces that differ from it are written."""
        made = []
        try:
            parent = self._parent(backup)
            size = volume.size * units.Gi
            with sync.SyncCluster(self.urls, self._key,
                                  io_timeout=self.timeout) as cl:
                try:
                    existed = cl.run(self._prepare_chain, chain, size,
                                     parent[1] if parent else None)
                except exception.NotFound:
                    existed = cl.run(self._prepare_chain, chain, size, None)
                progress = _Progress('%s (full, from the device)' % what,
                                     size)
                read = written = 0
                with cl.open_volume(chain) as dst:
                    volume_file.seek(0)
                    for offset in range(0, size, PIECE):
                        n = min(PIECE, size - offset)
                        data = _read_exact(volume_file, n)
                        read += len(data)
                        old = dst.read(offset, n) if existed else bytes(n)
                        if data != old:
                            if data.count(0) == n:
                                dst.write_zeroes(offset, n)
                            else:
                                dst.write(offset, data)
                            written += n
                        progress(n)
                    dst.flush()
                progress.log(final=True)
            self.last_transfer = {'kind': 'full', 'read': read,
                                  'written': written}
            self._finish(backup, volume, chain, point, made,
                         backup_metadata)
        except BaseException:
            self._undo(backup, volume, made, backup_metadata)
            raise

    def _finish(self, backup, volume, chain, point, made, backup_metadata):
        self._master.create_snapshot(chain, point)
        made.append((self._master, '%s@%s' % (chain, point)))
        if backup_metadata:
            self._save_metadata(volume, backup)

    def _undo(self, backup, volume, made, backup_metadata):
        """A failed backup leaves nothing behind."""
        for master, ref in reversed(made):
            self._quietly(master.delete_snapshot, ref)
        if backup_metadata:
            self._quietly(self._master.delete_volume,
                          META % (volume.name, backup.id))

    def _keep_newest_base(self, src, volume, base):
        """Only the newest base stays: the next incremental's.  Best
        effort: the backup is made."""
        try:
            names = base_snapshots(src.snapshots(volume.name))
        except exception.UrsaError as e:
            LOG.warning('Volume %(v)s: older backup base snapshots not '
                        'deleted (%(e)s); the next backup deletes them',
                        {'v': volume.name, 'e': e})
            return
        for name in names:
            if name != base:
                self._quietly(src.delete_snapshot,
                              '%s@%s' % (volume.name, name))

    def _parent(self, backup):
        """The parent backup's base snapshot name and chain snapshot, when
        this is an incremental: (base or None, point); else None."""
        if not backup.parent_id:
            return None
        parent = objects.Backup.get_by_id(self.context, backup.parent_id)
        meta = _service_metadata(parent)
        return meta.get('base'), POINT % parent.id

    async def _transfer(self, source, volume_name, state, parent, chain,
                        what):
        """Copy ``state`` (``volume@snapshot`` of the source cluster)
        onto the chain: what changed since the parent's base, or all."""
        target = cluster_mod.Cluster(self.urls, self._key,
                                     io_timeout=self.timeout)
        try:
            view = await source.open_volume(state, writable=False)
            try:
                return await self._copy(source, target, view, volume_name,
                                        parent, chain, what)
            finally:
                await view.close()
        finally:
            await target.close()

    async def _prepare_chain(self, cluster, chain, size, parent_point):
        """Make the chain ``size`` bytes, reverted to the parent's
        snapshot when there is one (else as it is); return whether it
        existed (False: created now, it reads zeros)."""
        master = cluster.master
        try:
            info = await master.volume(chain)
        except exception.NotFound:
            kwargs = {'chunk_size': CONF.backup_ursa_chunk_size_mib
                      * units.Mi}
            if CONF.backup_ursa_replicas:
                kwargs['replicas'] = CONF.backup_ursa_replicas
            await master.create_volume(chain, size, **kwargs)
            return False
        if parent_point is not None:
            await master.revert(chain, parent_point)
            info = await master.volume(chain)
        if info['size'] < size:
            await master.resize(chain, size, False)
        elif info['size'] > size:
            # A smaller state than the chain's last (a snapshot taken
            # before an extend): the tail zeroed, then cut.
            await cluster.resize(chain, size, force=True)
        return True

    async def _copy(self, source, target, view, volume_name, parent, chain,
                    what):
        since = None
        if parent is not None and parent[0] is not None:
            since = await self._since(source, view, volume_name, parent[0])
        try:
            existed = await self._prepare_chain(
                target, chain, view.size,
                parent[1] if since is not None else None)
        except exception.NotFound:
            # The parent's snapshot is gone from the chain: all of it.
            since = None
            existed = await self._prepare_chain(target, chain, view.size,
                                                None)
        extents = await diff_mod.changed_extents(view, since)
        kind = 'incremental' if since is not None else 'full'
        if since is None and existed:
            # A full copy onto a chain holding older backups: what the
            # volume does not hold reads zeros.
            extents = sorted(extents + diff_mod.complement(extents,
                                                           view.size),
                             key=lambda e: e.offset)
        progress = _Progress('%s (%s)' % (what, kind),
                             sum(e.length for e in extents))
        dst = await target.open_volume(chain, writable=True)
        try:
            read = await diff_mod.copy_extents(view, dst, extents, progress)
            await dst.flush()
        finally:
            await dst.close()
        progress.log(final=True)
        return {'kind': kind, 'read': read, 'extents': len(extents),
                'written': sum(e.length for e in extents
                               if e.kind == 'data'),
                'zeroed': sum(e.length for e in extents
                              if e.kind == 'zero')}

    async def _since(self, source, view, volume_name, base):
        """The sequence of the parent's base on the source; None when it
        is gone or not older (everything is copied then)."""
        try:
            snap = await source.master.snapshot('%s@%s' % (volume_name,
                                                           base))
            return diff_mod.since_of(view, snap)
        except (exception.NotFound, exception.InvalidArgument) as e:
            LOG.warning('The parent backup\'s base %(base)s cannot be '
                        'diffed from (%(e)s): copying every extent',
                        {'base': base, 'e': e})
            return None

    # --- metadata -------------------------------------------------------

    def _save_metadata(self, volume, backup):
        # Cinder's JSON of the volume's metadata (base, glance, plain).
        data = (self.get_metadata(volume.id) or '{}').encode()
        blob = len(data).to_bytes(8, 'big') + data
        size = -(-len(blob) // 4096) * 4096
        name = META % (volume.name, backup.id)
        self._master.create_volume(name, size, chunk_size=units.Mi)
        with sync.SyncCluster(self.urls, self._key,
                              io_timeout=self.timeout) as cl, \
                cl.open_volume(name) as v:
            v.write(0, blob + bytes(size - len(blob)), fua=True)

    def _load_metadata(self, volume_name, stored_id):
        name = META % (volume_name, stored_id)
        try:
            with sync.SyncCluster(self.urls, self._key,
                                  io_timeout=self.timeout) as cl, \
                    cl.open_volume(name, writable=False) as v:
                head = v.read(0, 8)
                n = int.from_bytes(head, 'big')
                if not 0 < n <= v.volume.size - 8:
                    raise exception.InvalidArgument(
                        reason='metadata volume %s is damaged' % name)
                return v.read(8, n).decode()
        except exception.NotFound:
            return None

    # --- restore ---------------------------------------------------------

    def restore(self, backup, volume_id, volume_file, volume_is_new):
        meta = _service_metadata(backup)
        chain = meta.get('chain')
        if not chain:
            raise cinder_exc.BackupDriverException(
                _('Backup %s has no Ursa chain recorded: it was not made '
                  'by this driver, or it failed') % backup.id)
        stored = _stored_id(backup, meta)
        ref = '%s@%s' % (chain, POINT % stored)
        what = _('Restore of backup %(b)s to volume %(v)s') % {
            'b': backup.id, 'v': volume_id}
        with self._guard(what), sync.SyncCluster(
                self.urls, self._key, io_timeout=self.timeout) as cl:
            async def plan(cluster):
                view = await cluster.open_volume(ref, writable=False)
                try:
                    return view.size, await diff_mod.changed_extents(view)
                finally:
                    await view.close()
            size, extents = cl.run(plan)
            zeros = [] if volume_is_new else diff_mod.complement(extents,
                                                                 size)
            total = sum(e.length for e in extents)
            progress = _Progress(what, total)
            with cl.open_volume(ref, writable=False) as view:
                self._write_extents(backup, cl, view, extents, volume_file,
                                    progress)
            _zero(volume_file, zeros)
            volume_file.flush()
            try:
                fd = volume_file.fileno()
            except (OSError, AttributeError) as e:
                LOG.debug('%s: no fsync of the target (%s)', what, e)
            else:
                # A volume that is a regular file (file-backed backends)
                # was opened 'wb' by Cinder, so cut to nothing: its size
                # back, the tail a hole.
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode) and st.st_size < size:
                    os.ftruncate(fd, size)
                _blocking(os.fsync, fd)
            progress.log(final=True)
        data = self._load_metadata(chain.rsplit('.backups', 1)[0], stored)
        if data:
            self.put_metadata(volume_id, data)

    def _write_extents(self, backup, cl, view, extents, volume_file,
                       progress):
        """Write the data extents to ``volume_file``, BATCH pieces read
        at once on the client loop while the last ones are written;
        BackupRestoreCancel when the backup's status changes."""
        pieces = [(e.offset + at, min(PIECE, e.length - at))
                  for e in extents for at in range(0, e.length, PIECE)]
        checked = time.monotonic()

        async def read(cluster, batch):
            return await asyncio.gather(*(view.volume.read(o, n)
                                          for o, n in batch))
        for i in range(0, len(pieces), BATCH):
            batch = pieces[i:i + BATCH]
            for (offset, _n), data in zip(batch, cl.run(read, batch),
                                          strict=True):
                volume_file.seek(offset)
                volume_file.write(data)
                progress(len(data))
            if time.monotonic() - checked > 5:
                checked = time.monotonic()
                self._check_cancel(backup)

    @staticmethod
    def _check_cancel(backup):
        with backup.as_read_deleted():
            backup.refresh()
        if backup.status != fields.BackupStatus.RESTORING:
            raise cinder_exc.BackupRestoreCancel(back_id=backup.id,
                                                 vol_id=backup.volume_id)

    # --- delete -----------------------------------------------------------

    def delete_backup(self, backup):
        meta = _service_metadata(backup)
        chain = meta.get('chain')
        what = _('Deleting backup %s') % backup.id
        if not chain:
            LOG.info('%s: nothing was stored for it', what)
            return
        volume_name = chain.rsplit('.backups', 1)[0]
        with self._guard(what), self._chain_lock(chain):
            stored = _stored_id(backup, meta)
            self._gone_ok(self._master.delete_snapshot,
                          '%s@%s' % (chain, POINT % stored))
            self._gone_ok(self._master.delete_volume,
                          META % (volume_name, stored))
            try:
                left = self._master.snapshots(chain)
            except exception.NotFound:
                left = None
            if left == []:
                self._gone_ok(self._master.delete_volume, chain)
        if meta.get('base'):
            # The base of the next incremental, if this was the newest:
            # on the volumes' cluster, which may be gone with the volume.
            try:
                volume = objects.Volume.get_by_id(self.context,
                                                  backup.volume_id)
                source = self._source(volume)
                if source is not None:
                    src = master_mod.MasterClient(*source,
                                                  timeout=self.timeout)
                    self._gone_ok(src.delete_snapshot, '%s@%s' % (
                        volume_name, meta['base']))
            except (cinder_exc.VolumeNotFound, cinder_exc.NotFound,
                    exception.UrsaError, cinder_exc.BackupDriverException
                    ) as e:
                LOG.info('%(what)s: its base snapshot on the volume was '
                         'not deleted (%(e)s)', {'what': what, 'e': e})

    @staticmethod
    def _gone_ok(fn, ref):
        try:
            fn(ref)
        except exception.NotFound:
            pass

    @staticmethod
    def _quietly(fn, ref):
        try:
            fn(ref)
        except exception.NotFound:
            pass
        except exception.UrsaError as e:
            LOG.warning('Cleaning up %(ref)s failed: %(e)s; delete it with '
                        'ursa snapshot/volume delete', {'ref': ref, 'e': e})


def _blocking(fn, *args):
    """``fn(*args)``, in eventlet's native thread pool when eventlet has
    patched this process (cinder-backup's default): a long system call
    must not stop its green threads (heartbeats, other backups)."""
    patcher = sys.modules.get('eventlet.patcher')
    if patcher is not None and patcher.is_monkey_patched('thread'):
        from eventlet import tpool
        return tpool.execute(fn, *args)
    return fn(*args)


def _read_exact(f, n):
    """``n`` bytes of ``f`` (a device reads short only at its end: the
    rest is zeros)."""
    parts = []
    left = n
    while left:
        data = f.read(left)
        if not data:
            break
        parts.append(data)
        left -= len(data)
    return b''.join(parts) + bytes(left)


def _stored_id(backup, meta):
    """The id a backup's data is named after: its own, or the one it
    was exported under (a record imported under another id)."""
    stored = meta.get('id')
    return stored if isinstance(stored, str) and stored else backup.id


def _service_metadata(backup):
    try:
        meta = json.loads(backup.service_metadata or '{}')
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _zero(volume_file, extents):
    """Zero ``extents`` of the restore target: holes punched where the
    file takes them (ursa-attach's files, block devices), else zeros
    written."""
    if not extents:
        return
    punch = _puncher(volume_file)
    zeros = bytes(PIECE)
    for e in extents:
        if punch is not None and punch(e.offset, e.length):
            continue
        punch = None
        for at in range(0, e.length, PIECE):
            n = min(PIECE, e.length - at)
            volume_file.seek(e.offset + at)
            volume_file.write(zeros[:n])


def _puncher(volume_file):
    """punch(offset, length) -> bool, or None where it cannot be done."""
    try:
        fd = volume_file.fileno()
    except (OSError, AttributeError):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
    fallocate = libc.fallocate
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                          ctypes.c_int64]
    volume_file.flush()

    def punch(offset, length):
        if _blocking(fallocate, fd, _FALLOC_PUNCH, offset, length) == 0:
            return True
        err = ctypes.get_errno()
        if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return False
        raise OSError(err, os.strerror(err))
    return punch


class _Translated:
    """Context manager: Ursa errors as BackupDriverException, with what
    failed and what to check."""

    def __init__(self, what, urls):
        self.what, self.urls = what, urls

    def __enter__(self):
        return self

    def __exit__(self, typ, e, tb):
        if e is None or not isinstance(e, exception.UrsaError):
            return False
        if isinstance(e, exception.UrsaConnectionError):
            msg = _('%(what)s: cannot reach an Ursa master (%(e)s); check '
                    'backup_ursa_master_urls (%(urls)s) and the volume '
                    'backend\'s ursa_master_urls, and that ursa-master '
                    'runs') % {'what': self.what, 'e': e,
                               'urls': ', '.join(self.urls)}
        else:
            msg = _('%(what)s: %(e)s') % {'what': self.what, 'e': e}
        raise cinder_exc.BackupDriverException(msg) from e

"""The end-to-end stack's hypervisor: Nova's fake virt driver whose guests
write.  Loaded as ``nova.virt.ursa_guest`` (``compute_driver =
ursa_guest.UrsaGuestDriver``): Nova loads drivers from ``nova.virt`` only,
and ``tests/e2e/nova_compute.py`` adds this directory to that package.

Each volume of a guest gets a writer (``tests/e2e/guest_writer.py``)
through the path os-brick's connector returns for the attachment, as a
QEMU opens its disks.  The writers run in sessions of their own, so they
outlive a nova-compute killed with its process group (a host "dead" to
Nova and alive to the storage), and they are found again from their pid
files by a nova-compute that restarts: it lists their instances as on this
hypervisor, so Nova destroys those that were evacuated meanwhile (its
``_destroy_evacuated_instances``), which stops their writers.

Where things are (``URSA_GUEST_DIR``, from the harness):

* ``<instance>.<volume>.<host>.journal``: one writer's journal;
* ``<host>/<instance>.<volume>.pid``: the pid of a writer running there;
* ``<instance>.switchover``: a live migration's switchover (below).

Block numbers: each host writes its own range (``first_block``), so a
writer that keeps trying on a fenced host never names a block another
host writes.

Live migration, as QEMU does it: the destination's writers start in
``pre_live_migration`` and wait, their disk open, for the switchover;
the source's ``live_migration`` lets its writers run through the memory
copy (``guest_migration_seconds`` of the instance's metadata, default 1),
then stops them (each ends its write and fsync: the guest paused and its
disks flushed) and makes the switchover file, on which the destination's
writers write on.  An abort during the copy (``live_migration_abort``)
stops the destination's waiting writers (as libvirt ends the incoming
QEMU) and rolls back with the source's writers untouched.  Metadata
``guest_fail_pre_live_migration`` makes the destination refuse the
migration (a destination failure).

``pause`` and ``unpause`` stop and continue the writers (SIGSTOP,
SIGCONT), so a test can hold the guests still while it checks a volume.
"""

import os
import re
import signal
import subprocess
import sys
import time

from nova import exception
from nova.virt import driver
from nova.virt import fake
from os_brick.initiator import connector as brick_connector
from oslo_log import log as logging

LOG = logging.getLogger(__name__)

BLOCKS_PER_HOST = 65536     # 256 MiB of 4 KiB blocks


def guest_dir():
    return os.environ['URSA_GUEST_DIR']


def journal_path(instance_uuid, volume_id, host):
    return os.path.join(guest_dir(), '%s.%s.%s.journal' % (
        instance_uuid, volume_id, host))


def switchover_path(instance_uuid):
    return os.path.join(guest_dir(), '%s.switchover' % instance_uuid)


def first_block(host):
    """The first block ``host`` writes: 256 (after the image's first MiB)
    in the range of its number (compute1: 0, compute2: 1, ...)."""
    m = re.search(r'(\d+)$', host)
    n = int(m.group(1)) - 1 if m else 0
    return 256 + n * BLOCKS_PER_HOST


def alive(pid, journal=None):
    """Whether ``pid`` is a live writer (of ``journal``, when given)."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            if f.read().rsplit(')', 1)[1].split()[0] == 'Z':
                return False
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            argv = f.read().split(b'\0')
    except (OSError, IndexError):
        return False
    return b'tests.e2e.guest_writer' in argv and (
        journal is None or journal.encode() in argv)


class UrsaGuestDriver(fake.FakeDriverWithoutFakeNodes):

    def __init__(self, virtapi, read_only=False):
        super().__init__(virtapi, read_only)
        self._children = {}         # pid -> Popen (reaped when it ends)
        self._aborted = set()

    # --- the writers -----------------------------------------------------

    def _pid_dir(self, host=None):
        d = os.path.join(guest_dir(), host or self._host)
        os.makedirs(d, exist_ok=True)
        return d

    def _writers(self, instance_uuid=None, host=None):
        """{(instance, volume): pid} of the writers running on this host
        (or ``host``)."""
        out = {}
        host = host or self._host
        for name in os.listdir(self._pid_dir(host)):
            parts = name.split('.')
            if len(parts) != 3 or parts[2] != 'pid' or (
                    instance_uuid and parts[0] != instance_uuid):
                continue
            path = os.path.join(self._pid_dir(host), name)
            try:
                pid = int(open(path).read())
            except (OSError, ValueError):
                continue
            if alive(pid, journal_path(parts[0], parts[1], host)):
                out[(parts[0], parts[1])] = pid
            else:
                os.unlink(path)
        return out

    def _start_writers(self, instance, block_device_info, wait_for=None):
        for bdm in driver.block_device_info_get_mapping(block_device_info):
            info = bdm['connection_info']
            if info.get('driver_volume_type') != 'local':
                continue
            path = brick_connector.InitiatorConnector.factory(
                'LOCAL', None).connect_volume(info['data'])['path']
            # Cinder's volume id (Nova's ``serial``), as the journals are
            # named.
            vid = info.get('serial') or info['data']['ursa_volume'][
                len('volume-'):]
            journal = journal_path(instance.uuid, vid, self._host)
            argv = [sys.executable, '-m', 'tests.e2e.guest_writer', path,
                    journal, '--first', str(first_block(self._host))]
            if wait_for:
                argv += ['--wait-for', wait_for]
            log = open(journal[:-len('.journal')] + '.log', 'ab')
            p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
            log.close()
            self._children[p.pid] = p
            with open(os.path.join(self._pid_dir(), '%s.%s.pid' % (
                    instance.uuid, vid)), 'w') as f:
                f.write(str(p.pid))
            LOG.info('Guest writer %d on %s for volume %s%s', p.pid, path,
                     vid, ' (waiting for the switchover)' if wait_for
                     else '', instance=instance)

    def _stop_writers(self, instance_uuid, host=None, timeout=10.0):
        """End the writers of an instance on this host (or ``host``):
        each finishes its write and fsync (SIGTERM), or is killed after
        ``timeout``."""
        host = host or self._host
        pids = self._writers(instance_uuid, host)
        for pid in pids.values():
            os.kill(pid, signal.SIGCONT)    # a paused guest stops too
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for (iid, vid), pid in pids.items():
            journal = journal_path(iid, vid, host)
            while alive(pid, journal) and time.monotonic() < deadline:
                p = self._children.get(pid)
                if p is not None:
                    p.poll()
                time.sleep(0.01)
            if alive(pid, journal):
                os.kill(pid, signal.SIGKILL)
            p = self._children.pop(pid, None)
            if p is not None:
                p.wait()
            try:
                os.unlink(os.path.join(self._pid_dir(host), '%s.%s.pid' % (
                    iid, vid)))
            except FileNotFoundError:
                pass
        return len(pids)

    def _signal_writers(self, instance_uuid, sig):
        for pid in self._writers(instance_uuid).values():
            os.kill(pid, sig)

    # --- the guest's life ------------------------------------------------

    def list_instance_uuids(self):
        # A restarted nova-compute knows its guests from their writers.
        return sorted(set(super().list_instance_uuids()) |
                      {iid for iid, _ in self._writers()})

    def spawn(self, context, instance, image_meta, injected_files,
              admin_password, allocations, network_info=None,
              block_device_info=None, power_on=True, accel_info=None):
        super().spawn(context, instance, image_meta, injected_files,
                      admin_password, allocations, network_info,
                      block_device_info, power_on, accel_info)
        if power_on:
            self._start_writers(instance, block_device_info)

    def destroy(self, context, instance, network_info, block_device_info=None,
                destroy_disks=True, destroy_secrets=True):
        n = self._stop_writers(instance.uuid)
        if n:
            LOG.info('Stopped %d guest writer(s)', n, instance=instance)
        if instance.uuid in self.instances:
            super().destroy(context, instance, network_info,
                            block_device_info, destroy_disks,
                            destroy_secrets)

    def power_off(self, instance, timeout=0, retry_interval=0):
        super().power_off(instance, timeout, retry_interval)
        self._stop_writers(instance.uuid)

    def pause(self, instance):
        self._signal_writers(instance.uuid, signal.SIGSTOP)

    def unpause(self, instance):
        self._signal_writers(instance.uuid, signal.SIGCONT)

    # --- live migration ----------------------------------------------------

    def pre_live_migration(self, context, instance, block_device_info,
                           network_info, disk_info, migrate_data):
        """Destination: the guest's disks are opened, its writers wait
        for the switchover."""
        if (instance.metadata or {}).get('guest_fail_pre_live_migration'):
            raise exception.MigrationPreCheckError(
                reason='guest_fail_pre_live_migration is set')
        try:
            os.unlink(switchover_path(instance.uuid))
        except FileNotFoundError:
            pass
        self._start_writers(instance, block_device_info,
                            wait_for=switchover_path(instance.uuid))
        return migrate_data

    def live_migration(self, context, instance, dest, post_method,
                       recover_method, block_migration=False,
                       migrate_data=None):
        """Source: the memory copy, then the switchover (or the abort)."""
        self._aborted.discard(instance.uuid)
        seconds = float((instance.metadata or {}).get(
            'guest_migration_seconds', 1))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if instance.uuid in self._aborted:
                self._aborted.discard(instance.uuid)
                # As libvirt does, the guest waiting on the destination
                # goes (with a shared instance path Nova does not call
                # the destination's rollback).
                n = self._stop_writers(instance.uuid, host=dest)
                LOG.info('Live migration aborted during the copy: %d '
                         'writer(s) waiting on %s stopped', n, dest,
                         instance=instance)
                recover_method(context, instance, dest, migrate_data,
                               migration_status='cancelled')
                return
            time.sleep(0.05)
        n = self._stop_writers(instance.uuid)
        with open(switchover_path(instance.uuid), 'w') as f:
            f.write('%f\n' % time.time())
        LOG.info('Switchover to %s: %d writer(s) paused and flushed here',
                 dest, n, instance=instance)
        post_method(context, instance, dest, block_migration, migrate_data)

    def live_migration_abort(self, instance):
        self._aborted.add(instance.uuid)

    def post_live_migration(self, context, instance, block_device_info,
                            migrate_data=None):
        """Source, after the switchover: the guest is gone from here."""
        self._stop_writers(instance.uuid)
        self.instances.pop(instance.uuid, None)

    def post_live_migration_at_destination(self, context, instance,
                                           network_info,
                                           block_migration=False,
                                           block_device_info=None):
        # The guest runs here since the switchover: its writers too.
        image_meta = injected_files = admin_password = allocations = None
        super(fake.FakeDriverWithoutFakeNodes, self).spawn(
            context, instance, image_meta, injected_files, admin_password,
            allocations)

    def rollback_live_migration_at_destination(self, context, instance,
                                               network_info,
                                               block_device_info,
                                               destroy_disks=True,
                                               migrate_data=None):
        self._stop_writers(instance.uuid)

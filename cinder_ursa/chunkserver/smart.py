"""SMART health of the disk under a chunk server's data directory, read
with ``smartctl --json=c -a`` (smartmontools 7.0 or later) every
``interval`` seconds and exported as ``ursa_chunkserver_smart_*``
(see :func:`.metrics.register_smart`).

The device is the whole disk holding the data directory's filesystem
(:func:`block_device`: its device number, then sysfs, from a partition to
its disk), unless ``[ursa_chunkserver] smart_device`` names it (a disk
behind a RAID controller, a USB bridge that needs ``-d``).  A directory
on no block device (tmpfs, overlay, NFS), or on a logical or virtual one
(device-mapper, md, loop, virtio, nbd, rbd, zram) has no SMART data: it is
reported once and ``supported`` is 0.

What is read (:func:`parse`, smartctl's JSON format 1.0):

* ``smart_status.passed``: the drive's own verdict (``healthy``);
* ``temperature.current``, ``power_on_time.hours``;
* NVMe: ``nvme_smart_health_information_log``'s ``percentage_used``
  (``wear_used_percent``), ``available_spare`` and ``media_errors``;
* ATA: the raw values of the attributes in :data:`ATA_RAW_IDS`
  (reallocated, pending and uncorrectable sectors...), and the wear of an
  SSD from the first of :data:`WEAR_ATTRIBUTES` it reports, matched by id
  and by the name smartctl's drive database gives it (the same id means
  other things on other drives: 233 is Intel's Media_Wearout_Indicator
  but Total_LBAs_Written on some others): their *normalized* value counts
  the life left down from 100, so the wear used is 100 - value;
* smartctl's exit status, a bit mask (:data:`EXIT_BITS`, from smartctl(8)
  "EXIT STATUS"; bit 2 alone often only says that one log could not be
  read, and the data read is still used).

smartctl runs on a thread of the poller's own (never on the event loop)
with a deadline (``timeout``); :meth:`SmartPoller.stop` kills a run in
progress.  Nothing here can stop the chunk server: every failure is
counted (``poll_errors_total{reason}``) and logged when it first happens.
"""

import asyncio
import collections
import concurrent.futures
import dataclasses
import json
import logging
import os
import subprocess
import threading
import time

LOG = logging.getLogger(__name__)

# smartctl's exit status, bit by bit (smartctl(8), EXIT STATUS; the
# FAIL* constants of smartctl.h): the label each bit is exported with.
EXIT_BITS = (
    'command_line',         # 0: command line did not parse (or no type)
    'device_open_failed',   # 1: device open failed (or in low power mode)
    'smart_command_failed',  # 2: a SMART or other command failed
    'disk_failing',         # 3: SMART status says "disk failing"
    'prefail_below_threshold',  # 4: prefail attributes <= threshold
    'usage_below_threshold',    # 5: ... in the past, or usage attributes
    'error_log',            # 6: the error log has errors
    'self_test_log',        # 7: the self-test log has errors
)

# Why a poll read nothing (poll_errors_total{reason}).
REASONS = ('not_installed', 'timeout', 'unparsable', 'device_open_failed')

# ATA attributes whose raw value is exported (ata_attribute_raw{id,name}):
# the sector and transfer error counts that predict a failing disk.
ATA_RAW_IDS = (
    5,      # Reallocated_Sector_Ct
    187,    # Reported_Uncorrect
    197,    # Current_Pending_Sector
    198,    # Offline_Uncorrectable
    199,    # UDMA_CRC_Error_Count (a cable or backplane, not the media)
)

# ATA attributes whose normalized value is an SSD's life left, 100 when
# new (smartctl's drive database names them), in order of preference.
WEAR_ATTRIBUTES = (
    (233, 'Media_Wearout_Indicator'),   # Intel, some Kingston, Lite-On
    (177, 'Wear_Leveling_Count'),       # Samsung
    (231, 'SSD_Life_Left'),             # SandForce, Kingston, Seagate
    (202, 'Percent_Lifetime_Remain'),   # Micron, Crucial
)

# Block devices with no SMART of their own (kernel name prefixes):
# logical (dm, md), virtual (loop, zram, ram, nbd, rbd) and paravirtual
# disks (virtio, Xen).
NO_SMART = ('dm-', 'md', 'loop', 'zram', 'ram', 'nbd', 'rbd', 'vd', 'xvd')

TIMEOUT = 30.0


class Unparsable(ValueError):
    """smartctl's output is not its JSON."""


@dataclasses.dataclass
class Reading:
    """What one run of smartctl said (None: not reported)."""
    exit_status: int
    supported: bool
    messages: tuple = ()
    protocol: str = None
    model: str = None
    healthy: bool = None
    temperature: float = None
    power_on_hours: float = None
    wear_used_percent: float = None
    wear_source: str = None     # where the wear was read
    media_errors: float = None
    available_spare_percent: float = None
    ata_raw: dict = dataclasses.field(default_factory=dict)  # (id, name) ->

    @property
    def exit_bits(self):
        return exit_bits(self.exit_status)


def exit_bits(status):
    """{bit: (label, 0 or 1)} of smartctl's exit status (8 bits)."""
    return {bit: (name, (status >> bit) & 1)
            for bit, name in enumerate(EXIT_BITS)}


def describe_exit(status):
    """The names of the bits set in ``status``, for a log line."""
    return ', '.join(name for bit, (name, on) in exit_bits(status).items()
                     if on) or 'none'


def parse(text, returncode=None):
    """The :class:`Reading` of smartctl's ``--json`` output ``text``
    (``returncode``: its exit status, else the one the JSON reports);
    raises :class:`Unparsable` when it is not that JSON."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise Unparsable('not JSON (%s): %r' % (e, text[:80])) from e
    if not isinstance(doc, dict) or not isinstance(doc.get('smartctl'),
                                                   dict):
        raise Unparsable('no "smartctl" section: %r' % text[:80])
    sc = doc['smartctl']
    status = returncode if returncode is not None else sc.get('exit_status')
    if not isinstance(status, int):
        raise Unparsable('no exit status')
    messages = tuple(m.get('string', '') for m in sc.get('messages') or ()
                     if isinstance(m, dict))
    nvme = doc.get('nvme_smart_health_information_log')
    ata = (doc.get('ata_smart_attributes') or {}).get('table')
    smart_status = doc.get('smart_status')
    support = doc.get('smart_support') or {}
    has_data = bool(nvme or ata or isinstance(smart_status, dict))
    r = Reading(exit_status=status,
                supported=has_data and support.get('available') is not False,
                messages=messages,
                protocol=(doc.get('device') or {}).get('protocol'),
                model=doc.get('model_name'))
    if not r.supported:
        return r
    if isinstance(smart_status, dict) and 'passed' in smart_status:
        r.healthy = bool(smart_status['passed'])
    r.temperature = _number((doc.get('temperature') or {}).get('current'))
    r.power_on_hours = _number((doc.get('power_on_time') or {}).get('hours'))
    if isinstance(nvme, dict):
        if r.temperature is None:
            r.temperature = _number(nvme.get('temperature'))
        if r.power_on_hours is None:
            r.power_on_hours = _number(nvme.get('power_on_hours'))
        r.wear_used_percent = _number(nvme.get('percentage_used'))
        if r.wear_used_percent is not None:
            r.wear_source = 'NVMe percentage_used'
        r.media_errors = _number(nvme.get('media_errors'))
        r.available_spare_percent = _number(nvme.get('available_spare'))
    if isinstance(ata, list):
        attrs = {(a.get('id'), a.get('name')): a for a in ata
                 if isinstance(a, dict)}
        for (aid, name), a in attrs.items():
            raw = _number((a.get('raw') or {}).get('value'))
            if aid in ATA_RAW_IDS and raw is not None:
                r.ata_raw[aid, name] = raw
        for key in WEAR_ATTRIBUTES:
            value = _number((attrs.get(key) or {}).get('value'))
            # A normalized value is 1-253; above 100 it is not a
            # percentage of life left (some firmware counts otherwise).
            if value is not None and 0 <= value <= 100:
                r.wear_used_percent = 100 - value
                r.wear_source = 'ATA %d %s (100 - normalized value)' % key
                break
    return r


def _number(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return v


def block_device(major, minor, sys_root='/sys'):
    """The whole disk of device number ``major:minor``, by its kernel
    name: (name, None), or (None, why it has no SMART)."""
    if major == 0:
        return None, 'not on a block device (tmpfs, overlay, NFS, btrfs?)'
    node = os.path.join(sys_root, 'dev', 'block', '%d:%d' % (major, minor))
    if not os.path.exists(node):
        return None, 'no block device %d:%d in %s' % (major, minor,
                                                      sys_root)
    path = os.path.realpath(node)
    if os.path.exists(os.path.join(path, 'partition')):
        path = os.path.dirname(path)
    name = os.path.basename(path)
    virtual = os.path.join(os.path.realpath(sys_root), 'devices', 'virtual')
    if name.startswith(NO_SMART) or path.startswith(virtual + os.sep):
        return None, ('%s has no SMART of its own (a logical or virtual '
                      'device)' % name)
    return name, None


def data_device(data_dir, sys_root='/sys', dev_root='/dev'):
    """The disk device (e.g. ``/dev/sda``) holding ``data_dir``: (path,
    None), or (None, why there is none with SMART)."""
    st_dev = os.stat(data_dir).st_dev
    name, why = block_device(os.major(st_dev), os.minor(st_dev), sys_root)
    if name is None:
        return None, why
    return os.path.join(dev_root, name), None


class SmartPoller:
    """Runs smartctl on the disk of ``data_dir`` (or ``device``, with
    ``device_type`` for its ``-d``) every ``interval`` seconds, keeping
    the last :class:`Reading` for the metrics.  Its state changes on the
    event loop only; smartctl runs on a thread of its own."""

    def __init__(self, data_dir, interval=600.0, smartctl='smartctl',
                 device=None, device_type=None, timeout=TIMEOUT,
                 sys_root='/sys'):
        self.data_dir = data_dir
        self.interval = interval
        self.smartctl = smartctl
        self.device = device
        self.device_type = device_type
        self.timeout = timeout
        self.sys_root = sys_root
        self.reading = None         # the last Reading with data
        self.exit_status = None     # of the last run of smartctl
        self.supported = None       # None until the first poll ends
        self.last_poll = None       # time.time() of the last reading
        self.errors = collections.Counter(dict.fromkeys(REASONS, 0))
        self.polls = 0              # polls ended, whatever their outcome
        self._said = set()          # what was logged once
        self._last_outcome = None
        self._proc = None
        self._lock = threading.Lock()
        self._stopping = False
        self._task = None
        self._executor = None
        self._polled = asyncio.Event()

    # -- life cycle ---------------------------------------------------------

    def start(self):
        """Poll now, then every ``interval`` seconds, on the running loop."""
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix='smartctl')
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self):
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    async def wait_polled(self, timeout):
        """Wait until the next poll ends (tests)."""
        self._polled.clear()
        await asyncio.wait_for(self._polled.wait(), timeout)

    async def _run(self):
        loop = asyncio.get_running_loop()
        device = self.device
        if device is None:
            try:
                device, why = await loop.run_in_executor(
                    self._executor, data_device, self.data_dir,
                    self.sys_root)
            except OSError as e:
                device, why = None, str(e)
            if device is None:
                LOG.info('SMART: not available for %s: %s (set '
                         '[ursa_chunkserver] smart_device to the disk '
                         'holding it, if it has one)', self.data_dir, why)
                self.supported = False
                self._polled.set()
                return
            LOG.debug('SMART: %s is on %s', self.data_dir, device)
        self.device = device
        while True:
            try:
                outcome = await loop.run_in_executor(self._executor,
                                                     self.poll_once)
                self._apply(outcome)
            except Exception:  # noqa: BLE001 - a bug: keep the server
                if self._stopping:
                    return      # its executor is shut down
                LOG.exception('SMART: polling %s failed', self.device)
            await asyncio.sleep(self.interval)

    # -- one poll (on the poller's thread) ----------------------------------

    def command(self):
        cmd = [self.smartctl, '--json=c', '-a']
        if self.device_type:
            cmd += ['-d', self.device_type]
        return cmd + [self.device]

    def poll_once(self):
        """Run smartctl once: (outcome, what, its exit status or None):
        ('ok', Reading), ('unsupported', Reading), or (a reason of
        :data:`REASONS`, why)."""
        cmd = self.command()
        try:
            with self._lock:
                if self._stopping:
                    return 'stopped', '', None
                self._proc = subprocess.Popen(
                    cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    stdin=subprocess.DEVNULL, close_fds=True)
        except OSError as e:
            return 'not_installed', '%s: %s' % (self.smartctl, e), None
        proc = self._proc
        try:
            out, err = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return 'timeout', 'no answer within %g s' % self.timeout, None
        finally:
            with self._lock:
                self._proc = None
        status = proc.returncode
        if self._stopping:
            return 'stopped', '', status
        try:
            reading = parse(out.decode('utf-8', 'replace'), proc.returncode)
        except Unparsable as e:
            return 'unparsable', 'exit status %d, %s%s%s' % (
                status, e, (' (stderr: %s)' % err.decode(
                    'utf-8', 'replace').strip()[:200]) if err else '',
                ' (--json needs smartctl 7.0 or later)'
                if status & 1 else ''), status
        if reading.supported:
            return 'ok', reading, status
        if status & 2:
            return 'device_open_failed', '; '.join(reading.messages) or \
                'exit status %d' % status, status
        return 'unsupported', reading, status

    # -- on the loop ----------------------------------------------------------

    def _apply(self, outcome):
        kind, what, status = outcome
        if kind == 'stopped':
            return
        self.polls += 1
        changed = kind != self._last_outcome
        self._last_outcome = kind
        self.exit_status = status
        if kind == 'ok':
            self._read(what, changed)
        elif kind == 'unsupported':
            self.supported = False
            self.reading = None
            self._once('unsupported', logging.INFO,
                       'SMART: smartctl has no SMART data for %s (exit '
                       'status %d: %s): %s. Set [ursa_chunkserver] '
                       'smart_device_type if it is behind a USB bridge or '
                       'a RAID controller', self.device, what.exit_status,
                       describe_exit(what.exit_status),
                       '; '.join(what.messages) or 'no message')
        elif kind == 'not_installed':
            self.errors[kind] += 1
            self.supported = False
            self.reading = None
            self._once('not_installed', logging.WARNING,
                       'SMART: cannot run smartctl (%s): install '
                       'smartmontools (7.0 or later), or set '
                       '[ursa_chunkserver] smartctl_path, or set '
                       'smart_interval = 0', what)
        else:
            self.errors[kind] += 1
            if changed:
                LOG.warning('SMART: reading %s failed (%s): %s%s',
                            self.device, kind.replace('_', ' '), what,
                            ' (the chunk server\'s user may need the '
                            'right to open it: CAP_SYS_RAWIO, or '
                            'smartctl_path naming a sudo wrapper)'
                            if kind == 'device_open_failed' else '')
        self._polled.set()

    def _read(self, reading, changed):
        was = self.reading
        self.reading = reading
        self.supported = True
        self.last_poll = time.time()
        if reading.healthy is False and (was is None or
                                         was.healthy is not False):
            LOG.warning('SMART: %s (%s) says it is FAILING (exit status '
                        '%d: %s): plan to replace it', self.device,
                        reading.model or 'unknown model',
                        reading.exit_status,
                        describe_exit(reading.exit_status))
        elif changed or was is None:
            LOG.info('SMART: %s (%s, %s): %s, %s, exit status %d (%s)',
                     self.device, reading.protocol or '?',
                     reading.model or 'unknown model',
                     {True: 'passed', False: 'FAILED', None: 'no verdict'}[
                         reading.healthy],
                     'wear %g %% (%s)' % (reading.wear_used_percent,
                                          reading.wear_source)
                     if reading.wear_used_percent is not None else
                     'no wear indicator', reading.exit_status,
                     describe_exit(reading.exit_status))

    def _once(self, key, level, msg, *args):
        if key not in self._said:
            self._said.add(key)
            LOG.log(level, msg, *args)

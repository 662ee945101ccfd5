"""SMART data of the disk under a chunk server's data directory
(chunkserver/smart.py): smartctl's JSON parsed into health, wear,
temperature and error counts; its exit status decoded bit by bit; the
disk found from the data directory through sysfs; the poller running the
fake smartctl (tests/fixtures/bin/smartctl) as a real process, through
its failures (missing, too slow, garbage, device not opened), and its
metrics.

The fixtures (tests/fixtures/smartctl/*.json) have the shapes of
smartctl 7.x's ``--json`` output (JSON format 1.0) as smartmontools
prints them: its ``smartctl`` section with ``exit_status`` and
``messages``, ``smart_status.passed``, ``temperature.current``,
``power_on_time.hours``, ``nvme_smart_health_information_log``, and
``ata_smart_attributes.table`` entries with ``id``, ``name``, ``value``,
``worst``, ``thresh``, ``when_failed``, ``flags`` and ``raw``; compare the
outputs collected in prometheus-community/smartctl_exporter's testdata/
(e.g. nvme-null-Samsung_SSD_970_EVO_Plus_250GB-nvme0.json,
sat-Dell_Certified_Intel_S3520_Series_SSDs-SSDSCKJB240G7R-sdm.json,
nonexistent-device.json).  The values are ours.  virtio.json is
smartctl 7.3's own output for a virtio disk (no SMART), usb-unsupported
has its "Unknown USB bridge" messages (smartmontools issues #275, #283),
open-failed its message for a device it may not open.
"""

import asyncio
import copy
import json
import logging
import os
import time

import pytest
from prometheus_client import parser

from cinder_ursa.chunkserver import metrics
from cinder_ursa.chunkserver import smart
from cinder_ursa.transport import metrics as common_metrics

FIXTURES = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir,
                        'fixtures')
FAKE = os.path.abspath(os.path.join(FIXTURES, 'bin', 'smartctl'))


def fixture(name):
    with open(os.path.join(FIXTURES, 'smartctl', name + '.json')) as f:
        return f.read()


def doc(name):
    return json.loads(fixture(name))


# -- parsing ---------------------------------------------------------------


def test_nvme_wear_spare_and_media_errors():
    r = smart.parse(fixture('nvme'), 0)
    assert r.supported and r.healthy is True
    assert (r.protocol, r.model) == ('NVMe', 'SAMSUNG MZQL21T9HCJR-00A07')
    assert r.wear_used_percent == 7
    assert r.wear_source == 'NVMe percentage_used'
    assert r.available_spare_percent == 100
    assert r.media_errors == 0
    assert (r.temperature, r.power_on_hours) == (38, 15873)
    assert r.ata_raw == {}
    assert r.exit_status == 0


def test_nvme_without_top_level_temperature_uses_its_log():
    d = doc('nvme')
    del d['temperature'], d['power_on_time']
    d['nvme_smart_health_information_log']['percentage_used'] = 112
    r = smart.parse(json.dumps(d), 0)
    assert (r.temperature, r.power_on_hours) == (38, 15873)
    # NVMe lets percentage_used pass 100 (the rated endurance is used up).
    assert r.wear_used_percent == 112


def test_sata_ssd_wear_from_its_normalized_wear_attribute():
    r = smart.parse(fixture('sata-ssd'), 0)
    assert r.supported and r.healthy is True and r.protocol == 'ATA'
    # 177 Wear_Leveling_Count: normalized 96 of 100 left.
    assert r.wear_used_percent == 4
    assert r.wear_source.startswith('ATA 177 Wear_Leveling_Count')
    assert (r.temperature, r.power_on_hours) == (34, 21876)
    assert r.media_errors is None and r.available_spare_percent is None
    assert r.ata_raw == {(5, 'Reallocated_Sector_Ct'): 0,
                         (187, 'Uncorrectable_Error_Cnt'): 0,
                         (199, 'CRC_Error_Count'): 0}


def _with_attr(d, aid, name, value):
    table = d['ata_smart_attributes']['table']
    table[:] = [a for a in table if a['id'] != 177]
    table.append({'id': aid, 'name': name, 'value': value, 'worst': value,
                  'thresh': 0, 'when_failed': '',
                  'flags': {'value': 50, 'string': '-O--CK '},
                  'raw': {'value': 123456, 'string': '123456'}})
    return json.dumps(d)


def test_ata_wear_attribute_is_matched_by_id_and_name():
    d = doc('sata-ssd')
    # Some drive databases call 233 Total_LBAs_Written: not a wear level.
    r = smart.parse(_with_attr(copy.deepcopy(d), 233, 'Total_LBAs_Written',
                               90), 0)
    assert r.wear_used_percent is None and r.wear_source is None
    r = smart.parse(_with_attr(copy.deepcopy(d), 233,
                               'Media_Wearout_Indicator', 90), 0)
    assert r.wear_used_percent == 10
    r = smart.parse(_with_attr(copy.deepcopy(d), 231, 'SSD_Life_Left', 0), 0)
    assert r.wear_used_percent == 100
    # A normalized value above 100 is no percentage of life left.
    r = smart.parse(_with_attr(copy.deepcopy(d), 177, 'Wear_Leveling_Count',
                               200), 0)
    assert r.wear_used_percent is None


def test_hdd_with_reallocated_sectors():
    r = smart.parse(fixture('hdd-reallocated'))
    assert r.supported and r.healthy is True
    assert r.wear_used_percent is None     # spinning: no wear indicator
    assert r.ata_raw == {(5, 'Reallocated_Sector_Ct'): 24,
                         (197, 'Current_Pending_Sector'): 8,
                         (198, 'Offline_Uncorrectable'): 8,
                         (199, 'UDMA_CRC_Error_Count'): 0}
    assert r.temperature == 37
    # The exit status from the JSON when none is given: errors logged.
    assert r.exit_status == 0x40
    assert smart.describe_exit(r.exit_status) == 'error_log'


def test_failing_drive():
    r = smart.parse(fixture('failing'), 0x58)
    assert r.supported and r.healthy is False
    assert r.ata_raw[5, 'Reallocated_Sector_Ct'] == 2008
    assert r.ata_raw[197, 'Current_Pending_Sector'] == 312
    assert {bit for bit, (_, on) in r.exit_bits.items() if on} == {3, 4, 6}
    assert r.exit_bits[3] == ('disk_failing', 1)


@pytest.mark.parametrize('name, status, message', [
    ('usb-unsupported', 1, 'Unknown USB bridge'),
    ('virtio', 1, 'Unable to detect device type'),
    ('open-failed', 2, 'Permission denied'),
])
def test_no_data(name, status, message):
    r = smart.parse(fixture(name), status)
    assert not r.supported
    assert r.healthy is None and r.wear_used_percent is None
    assert r.exit_status == status
    assert any(message in m for m in r.messages)


def test_device_without_smart_capability():
    d = doc('hdd-reallocated')
    d['smart_support'] = {'available': False}
    del d['ata_smart_attributes']
    d['smart_status'] = {}
    assert not smart.parse(json.dumps(d), 4).supported


@pytest.mark.parametrize('text', [
    '', 'smartctl 7.3 2022-02-28 r5338\n', '[1, 2]', '{"device": {}}',
    '{"smartctl": {"version": [7, 3]}}',
])
def test_unparsable(text):
    with pytest.raises(smart.Unparsable):
        smart.parse(text)


# -- the exit status -------------------------------------------------------


def test_exit_bits():
    assert smart.exit_bits(0) == {
        bit: (name, 0) for bit, name in enumerate(smart.EXIT_BITS)}
    bits = smart.exit_bits(0x58)
    assert [b for b, (_, on) in bits.items() if on] == [3, 4, 6]
    assert smart.describe_exit(0x58) == \
        'disk_failing, prefail_below_threshold, error_log'
    assert smart.describe_exit(2) == 'device_open_failed'
    assert smart.describe_exit(0x84) == 'smart_command_failed, self_test_log'
    assert smart.describe_exit(0) == 'none'
    assert len(smart.exit_bits(0xff)) == 8 and all(
        on for _, on in smart.exit_bits(0xff).values())


# -- the disk under the data directory ---------------------------------------


def fake_sys(root, devices):
    """A sysfs tree under ``root``: ``devices`` maps 'MAJ:MIN' to the
    device's directory under ``devices/``; one in the directory of
    another is a partition (its directory holds a ``partition`` file)."""
    block = root / 'dev' / 'block'
    block.mkdir(parents=True, exist_ok=True)
    for number, path in devices.items():
        d = root / 'devices' / path
        d.mkdir(parents=True, exist_ok=True)
        (d / 'dev').write_text(number + '\n')
        if os.path.dirname(path) in devices.values():
            (d / 'partition').write_text(path[-1] + '\n')
        (block / number).symlink_to(os.path.relpath(d, block))
    return str(root)


PCI = 'pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/'
NVME = 'pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0/'


def test_block_device_partition_to_whole_disk(tmp_path):
    sys_root = fake_sys(tmp_path, {
        '8:0': PCI + 'sda', '8:1': PCI + 'sda/sda1',
        '259:0': NVME + 'nvme0n1', '259:1': NVME + 'nvme0n1/nvme0n1p1',
        '253:0': 'virtual/block/dm-0', '9:0': 'virtual/block/md0',
        '7:0': 'virtual/block/loop0',
        '254:0': 'pci0000:00/0000:00:02.0/virtio1/block/vda',
        '254:1': 'pci0000:00/0000:00:02.0/virtio1/block/vda/vda1'})
    assert smart.block_device(8, 1, sys_root) == ('sda', None)
    assert smart.block_device(8, 0, sys_root) == ('sda', None)
    assert smart.block_device(259, 1, sys_root) == ('nvme0n1', None)
    for number in ((253, 0), (9, 0), (7, 0), (254, 1)):
        name, why = smart.block_device(*number, sys_root)
        assert name is None and 'logical or virtual' in why, number
    name, why = smart.block_device(8, 16, sys_root)
    assert name is None and 'no block device 8:16' in why
    name, why = smart.block_device(0, 45, sys_root)
    assert name is None and 'not on a block device' in why


def test_data_device_of_a_directory(tmp_path):
    st = os.stat(tmp_path)
    number = '%d:%d' % (os.major(st.st_dev), os.minor(st.st_dev))
    if os.major(st.st_dev) == 0:
        pytest.skip('tmp_path is on no block device here')
    sys_root = fake_sys(tmp_path / 'sys', {number: PCI + 'sdz/sdz3',
                                           '8:240': PCI + 'sdz'})
    assert smart.data_device(str(tmp_path), sys_root, '/devx') == \
        ('/devx/sdz', None)


def test_data_device_on_tmpfs():
    if not os.path.isdir('/dev/shm') or \
            os.major(os.stat('/dev/shm').st_dev) != 0:
        pytest.skip('no tmpfs at /dev/shm')
    name, why = smart.data_device('/dev/shm')
    assert name is None and 'not on a block device' in why


# -- the poller, with the fake smartctl --------------------------------------


class Fake:
    """The fake smartctl's fixture (:meth:`write_text` a name to switch)
    and the file logging its arguments (:attr:`log`)."""

    def __init__(self, d, monkeypatch):
        self.chosen = d / 'fixture'
        self.log = d / 'argv.log'
        self.write_text('nvme')
        monkeypatch.setenv('FAKE_SMARTCTL_FIXTURE_FILE', str(self.chosen))
        monkeypatch.setenv('FAKE_SMARTCTL_LOG', str(self.log))

    def write_text(self, name):
        self.chosen.write_text(name)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    return Fake(tmp_path, monkeypatch)


def polls(poller, n, timeout=20.0):
    """Start ``poller``, let it end ``n`` polls, stop it."""
    async def run():
        poller.start()
        try:
            for _ in range(n):
                await poller.wait_polled(timeout)
        finally:
            await poller.stop()
    asyncio.run(run())
    return poller


def scrape(poller):
    pm = common_metrics.ProcessMetrics('chunkserver')
    metrics.register_smart(poller, pm)
    out = {}
    for fam in parser.text_string_to_metric_families(pm.text()):
        for s in fam.samples:
            if s.name.startswith('ursa_chunkserver_smart_'):
                out[s.name[len('ursa_chunkserver_smart_'):],
                    tuple(sorted(s.labels.items()))] = s.value
    return out


def test_poller_reads_the_device_and_its_metrics(fake, tmp_path):
    p = smart.SmartPoller(str(tmp_path), interval=0.05, smartctl=FAKE,
                          device='/dev/nvme7', device_type='nvme')
    assert scrape(p) == {('poll_errors_total', (('reason', r),)): 0
                         for r in smart.REASONS}
    before = time.time()
    polls(p, 2)
    assert p.supported and p.reading.wear_used_percent == 7
    assert p.polls >= 2
    argv = [json.loads(line) for line in fake.log.read_text().splitlines()]
    assert argv[0] == [FAKE, '--json=c', '-a', '-d', 'nvme', '/dev/nvme7']
    m = scrape(p)
    assert m['supported', ()] == 1
    assert m['healthy', ()] == 1
    assert m['wear_used_percent', ()] == 7
    assert m['temperature_celsius', ()] == 38
    assert m['power_on_hours', ()] == 15873
    assert m['available_spare_percent', ()] == 100
    assert m['media_errors', ()] == 0
    assert m['exit_status', ()] == 0
    assert m['exit_status_bits', (('bit', '3'), ('meaning', 'disk_failing'))
             ] == 0
    assert m['device_info', (('device', '/dev/nvme7'), ('model',
             'SAMSUNG MZQL21T9HCJR-00A07'), ('protocol', 'NVMe'))] == 1
    assert before <= m['last_poll_timestamp_seconds', ()] <= time.time()
    assert not any(k[0] == 'ata_attribute_raw' for k in m)


def test_poller_failing_ata_disk(fake, tmp_path, caplog):
    fake.write_text('failing')
    p = polls(smart.SmartPoller(str(tmp_path), interval=0.05,
                                smartctl=FAKE, device='/dev/sdb'), 3)
    m = scrape(p)
    assert m['healthy', ()] == 0
    assert m['exit_status', ()] == 0x58
    on = {dict(k[1])['meaning'] for k, v in m.items()
          if k[0] == 'exit_status_bits' and v == 1}
    assert on == {'disk_failing', 'prefail_below_threshold', 'error_log'}
    assert m['ata_attribute_raw', (('id', '5'), ('name',
             'Reallocated_Sector_Ct'))] == 2008
    assert m['ata_attribute_raw', (('id', '198'), ('name',
             'Offline_Uncorrectable'))] == 296
    assert ('wear_used_percent', ()) not in m
    failing = [r for r in caplog.records if 'FAILING' in r.getMessage()]
    assert len(failing) == 1 and failing[0].levelno == logging.WARNING
    argv = json.loads(fake.log.read_text().splitlines()[0])
    assert argv[1:] == ['--json=c', '-a', '/dev/sdb']      # no -d


def test_poller_follows_the_disk_getting_worse(fake, tmp_path):
    p = smart.SmartPoller(str(tmp_path), interval=0.05, smartctl=FAKE,
                          device='/dev/sdb')

    async def run():
        p.start()
        try:
            await p.wait_polled(20)
            assert p.reading.healthy is True
            fake.write_text('failing')
            while p.reading.healthy is not False:
                await p.wait_polled(20)
        finally:
            await p.stop()
    asyncio.run(run())
    assert scrape(p)['healthy', ()] == 0


def test_missing_smartctl(tmp_path, caplog):
    p = polls(smart.SmartPoller(str(tmp_path), interval=0.01,
                                smartctl=str(tmp_path / 'no-smartctl'),
                                device='/dev/sda'), 3)
    m = scrape(p)
    assert m['supported', ()] == 0
    assert m['poll_errors_total', (('reason', 'not_installed'),)] >= 3
    assert ('healthy', ()) not in m and ('exit_status', ()) not in m
    said = [r for r in caplog.records if 'smartmontools' in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING


def test_smartctl_that_does_not_answer_is_killed(fake, tmp_path):
    fake.write_text('sleep:30')
    p = smart.SmartPoller(str(tmp_path), interval=60, smartctl=FAKE,
                          device='/dev/sda', timeout=0.5)
    t = time.monotonic()
    polls(p, 1)
    assert time.monotonic() - t < 10
    assert p.errors['timeout'] == 1 and p.reading is None
    assert scrape(p)['poll_errors_total', (('reason', 'timeout'),)] == 1


def test_stop_kills_a_run_in_progress(fake, tmp_path):
    fake.write_text('sleep:30')
    p = smart.SmartPoller(str(tmp_path), interval=60, smartctl=FAKE,
                          device='/dev/sda', timeout=60)

    async def run():
        p.start()
        while p._proc is None:
            await asyncio.sleep(0.01)
        proc = p._proc
        t = time.monotonic()
        await p.stop()
        # The loop went on: stop() does not wait for smartctl.
        assert time.monotonic() - t < 1
        for _ in range(500):
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.01)
        return proc
    t = time.monotonic()
    proc = asyncio.run(run())
    assert proc.returncode == -9
    assert time.monotonic() - t < 10
    assert p.errors['timeout'] == 0 and p.polls == 0


@pytest.mark.parametrize('name, reason', [
    ('garbage', 'unparsable'), ('open-failed', 'device_open_failed')])
def test_poll_errors(fake, tmp_path, caplog, name, reason):
    fake.write_text(name)
    p = polls(smart.SmartPoller(str(tmp_path), interval=0.01,
                                smartctl=FAKE, device='/dev/sda'), 3)
    assert p.errors[reason] >= 3
    assert sum(p.errors.values()) == p.errors[reason]
    # Logged when it starts, not at every poll.
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and reason.replace('_', ' ') in \
        warned[0].getMessage()
    if reason == 'device_open_failed':
        assert scrape(p)['exit_status_bits', (
            ('bit', '1'), ('meaning', 'device_open_failed'))] == 1


def test_unsupported_device_is_said_once(fake, tmp_path, caplog):
    fake.write_text('usb-unsupported')
    caplog.set_level(logging.INFO, logger=smart.__name__)
    p = polls(smart.SmartPoller(str(tmp_path), interval=0.01,
                                smartctl=FAKE, device='/dev/sdc'), 3)
    m = scrape(p)
    assert m['supported', ()] == 0
    assert m['exit_status', ()] == 1
    assert sum(v for k, v in m.items() if k[0] == 'poll_errors_total') == 0
    said = [r for r in caplog.records if 'no SMART data' in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    assert 'Unknown USB bridge' in said[0].getMessage()


def test_data_directory_on_its_disk(fake, tmp_path, caplog):
    """No smart_device: the disk is found from the data directory."""
    st = os.stat(tmp_path)
    if os.major(st.st_dev) == 0:
        pytest.skip('tmp_path is on no block device here')
    number = '%d:%d' % (os.major(st.st_dev), os.minor(st.st_dev))
    sys_root = fake_sys(tmp_path / 'sys', {number: PCI + 'sdq/sdq2',
                                           '65:0': PCI + 'sdq'})
    p = polls(smart.SmartPoller(str(tmp_path), interval=0.01,
                                smartctl=FAKE, sys_root=sys_root), 1)
    assert p.device == '/dev/sdq' and p.supported
    argv = json.loads(fake.log.read_text().splitlines()[0])
    assert argv[1:] == ['--json=c', '-a', '/dev/sdq']


def test_data_directory_on_a_virtual_device(fake, tmp_path, caplog):
    st = os.stat(tmp_path)
    number = '%d:%d' % (os.major(st.st_dev), os.minor(st.st_dev))
    sys_root = fake_sys(tmp_path / 'sys', {number: 'virtual/block/dm-3'})
    caplog.set_level(logging.INFO, logger=smart.__name__)
    p = polls(smart.SmartPoller(str(tmp_path), interval=0.01,
                                smartctl=FAKE, sys_root=sys_root), 1)
    assert p.supported is False and p.polls == 0
    assert not fake.log.exists()        # smartctl never ran
    assert scrape(p)['supported', ()] == 0
    said = [r for r in caplog.records if 'not available' in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO

"""A real chunk server exports the SMART data of its disk: smartctl (the
fake one, tests/fixtures/bin/smartctl, printing smartctl 7.x's JSON) is
run every smart_interval on smart_device, and /metrics follows what it
says, down to the disk failing."""

import json
import os
import urllib.request

import pytest
from prometheus_client import parser

from cinder_ursa.cmd.allinone import AllInOne
from tests.fixtures.wait import wait_for
from tests.functional.conftest import STARTUP_TIMEOUT
from tests.functional.conftest import watch_logs

pytestmark = pytest.mark.timeout(90)

FAKE = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir,
                                    'fixtures', 'bin', 'smartctl'))
P = 'ursa_chunkserver_smart_'


@pytest.fixture
def cluster(request, tmp_path, monkeypatch):
    """One chunk server reading SMART from /dev/fake-nvme0 through the
    fake smartctl every 0.5 s; ``cluster.choose(name)`` switches the
    fixture smartctl prints."""
    chosen = tmp_path / 'fixture'
    chosen.write_text('nvme')
    # Inherited by the chunk server, read by the fake at each run.
    monkeypatch.setenv('FAKE_SMARTCTL_FIXTURE_FILE', str(chosen))
    monkeypatch.setenv('FAKE_SMARTCTL_LOG', str(tmp_path / 'argv.log'))
    d = str(tmp_path / 'cluster')
    c = AllInOne(d, 1, port_base=0, metrics=True, server_timeout=3.0,
                 server_startup_timeout=STARTUP_TIMEOUT)
    c.cs_extra_conf[0] = '\n'.join([
        'smart_device = /dev/fake-nvme0',
        'smart_device_type = nvme',
        'smartctl_path = %s' % FAKE,
        'smart_interval = 0.5'])
    c.choose = chosen.write_text
    c.argv_log = tmp_path / 'argv.log'
    watch_logs(request, d)
    try:
        c.start()
        yield c
    finally:
        c.stop(kill=True)


def scrape(cluster):
    """{(family-less sample name, frozenset of labels): value} of the
    chunk server's ursa_chunkserver_smart_* samples."""
    with open(os.path.join(cluster.cs_dir(0), 'endpoint.json')) as f:
        port = json.load(f)['metrics_port']
    url = 'http://127.0.0.1:%d/metrics' % port
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out = {}
    for fam in parser.text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith(P):
                out[s.name[len(P):], frozenset(s.labels.items())] = s.value
    return out


def test_smart_metrics_follow_the_disk(cluster):
    m = wait_for(lambda: (lambda s: s if ('healthy', frozenset()) in s
                          else None)(scrape(cluster)), 15,
                 'a first SMART reading')
    one = frozenset()
    assert m['supported', one] == 1
    assert m['healthy', one] == 1
    assert m['wear_used_percent', one] == 7
    assert m['available_spare_percent', one] == 100
    assert m['media_errors', one] == 0
    assert m['temperature_celsius', one] == 38
    assert m['power_on_hours', one] == 15873
    assert m['exit_status', one] == 0
    assert m['last_poll_timestamp_seconds', one] > 0
    assert m['device_info', frozenset({
        'device': '/dev/fake-nvme0', 'protocol': 'NVMe',
        'model': 'SAMSUNG MZQL21T9HCJR-00A07'}.items())] == 1
    for reason in ('not_installed', 'timeout', 'unparsable',
                   'device_open_failed'):
        assert m['poll_errors_total', frozenset({'reason': reason}.items())
                 ] == 0
    argv = json.loads(cluster.argv_log.read_text().splitlines()[0])
    assert argv[1:] == ['--json=c', '-a', '-d', 'nvme', '/dev/fake-nvme0']

    cluster.choose('failing')
    m = wait_for(lambda: (lambda s: s if s.get(('healthy', one)) == 0
                          else None)(scrape(cluster)), 10,
                 'the disk reported failing')
    assert m['exit_status', one] == 0x58
    assert m['exit_status_bits', frozenset(
        {'bit': '3', 'meaning': 'disk_failing'}.items())] == 1
    assert m['ata_attribute_raw', frozenset(
        {'id': '5', 'name': 'Reallocated_Sector_Ct'}.items())] == 2008
    # An HDD: no wear; the NVMe-only families are gone with the NVMe data.
    assert ('wear_used_percent', one) not in m
    assert ('media_errors', one) not in m
    log = open(os.path.join(cluster.data_dir, 'cs0.log')).read()
    assert 'FAILING' in log
    # The chunk server still serves.
    assert cluster.cs_procs[0].poll() is None

"""The Prometheus alert rules shipped in etc/prometheus: valid for
Prometheus, right by their promtool unit tests (ursa-alerts.test.yml),
each with a severity, a summary, a description and a runbook section of
the operations guide, and scraping jobs named as ursa-aio names them."""

import os
import re
import subprocess

import pytest

from cinder_ursa.cmd import allinone
from tests.fixtures import prometheus

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
GUIDE = 'doc/source/monitoring.rst'

# The alerts operators are promised (their runbook sections are in GUIDE).
ALERTS = {
    'UrsaChunkServerDown', 'UrsaMasterDown', 'UrsaNoLeader',
    'UrsaGatewayDown', 'UrsaAttachAgentDown', 'UrsaChunksOneCopy',
    'UrsaChunksNoCopy', 'UrsaDegradedTooLong', 'UrsaRecoveryStalled',
    'UrsaDiskErrors', 'UrsaVolumeSyncFailed', 'UrsaSlowDisk',
    'UrsaCapacityHigh', 'UrsaCapacityCritical', 'UrsaScrubErrors',
    'UrsaDiskSmartFailing', 'UrsaSsdWearHigh', 'UrsaDiskFailed',
    'UrsaMetricsErrors', 'NovaHAPaused',
    'NovaHACoordinationDown',
}


def promtool(*args):
    r = subprocess.run([prometheus.binary('promtool')] + list(args),
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_promtool_checks_the_rules():
    out = promtool('check', 'rules', prometheus.RULES)
    assert 'SUCCESS' in out


def test_promtool_unit_tests_of_the_rules_pass():
    """Down, capacity, one copy, no leader, recovery, slow disk, disk
    errors, nova_ha paused: each fires when it must, not before its
    ``for``, and with the labels and texts expected."""
    out = promtool('test', 'rules', prometheus.RULES_TEST)
    assert 'SUCCESS' in out


def test_the_promised_alerts_are_there_with_severity_and_texts():
    rules = prometheus.alert_rules()
    assert set(rules) == ALERTS
    for name, rule in rules.items():
        assert rule['labels']['severity'] in ('warning', 'critical'), name
        notes = rule['annotations']
        assert {'summary', 'description', 'runbook'} <= set(notes), name
        assert re.fullmatch(re.escape(GUIDE) + r'#[a-z0-9-]+',
                            notes['runbook']), (name, notes['runbook'])


def test_the_rules_name_the_jobs_ursa_aio_scrapes():
    jobs = {job for _, job in allinone.METRICS_JOBS}
    with open(prometheus.RULES) as f:
        used = set(re.findall(r'job="([^"]+)"', f.read()))
    assert used and used <= jobs, used - jobs


def section_anchors(rst):
    """The HTML anchors Sphinx makes of ``rst``'s section titles and
    explicit targets."""
    lines = rst.splitlines()
    anchors = set(re.findall(r'^\.\. _([a-z0-9-]+):\s*$', rst, re.M))
    for title, under in zip(lines, lines[1:], strict=False):
        if (title.strip() and len(set(under.strip())) == 1
                and under.strip()[0] in '=-~^"\'`#*+'
                and len(under.strip()) >= len(title.strip())):
            anchors.add(re.sub(r'[^a-z0-9]+', '-', title.lower()).strip('-'))
    return anchors


def test_every_runbook_names_a_section_of_the_guide():
    path = os.path.join(ROOT, GUIDE)
    if not os.path.exists(path):
        pytest.skip('%s is not written yet' % GUIDE)
    with open(path) as f:
        anchors = section_anchors(f.read())
    wanted = {r['annotations']['runbook'].split('#', 1)[1]
              for r in prometheus.alert_rules().values()}
    assert wanted <= anchors, sorted(wanted - anchors)


def test_section_anchors_are_sphinx_s():
    rst = ('Monitoring\n==========\n\n.. _no-leader:\n\nNo leader\n'
           '---------\n\nChunk server down\n-----------------\n\n'
           'Not a title\n---\n')
    assert section_anchors(rst) == {'monitoring', 'no-leader',
                                    'chunk-server-down'}

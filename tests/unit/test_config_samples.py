"""The sample configurations under etc/ match the options in the code."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize('generator,sample', [
    ('etc/ursa/ursa-config-generator.conf', 'etc/ursa/ursa.conf.sample'),
    ('etc/cinder/cinder-ursa-config-generator.conf',
     'etc/cinder/cinder.conf.ursa.sample'),
    ('etc/nova-ha/nova-ha-config-generator.conf',
     'etc/nova-ha/nova-ha.conf.sample'),
])
def test_conf_sample_is_current(tmp_path, generator, sample):
    out = tmp_path / 'sample'
    subprocess.run([
        sys.executable, '-m', 'oslo_config.generator', '--config-file',
        str(ROOT / generator), '--output-file', str(out)], check=True,
        cwd=ROOT)
    current = (ROOT / sample).read_text()
    assert out.read_text() == current, (
        '%s is stale: run "tox -e genconfig" (or oslo-config-generator '
        '--config-file %s) and commit the result' % (sample, generator))

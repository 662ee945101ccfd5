"""The sample configuration under etc/ matches the options in the code."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_ursa_conf_sample_is_current(tmp_path):
    out = tmp_path / 'ursa.conf.sample'
    subprocess.run([
        sys.executable, '-m', 'oslo_config.generator', '--config-file',
        str(ROOT / 'etc/ursa/ursa-config-generator.conf'),
        '--output-file', str(out)], check=True, cwd=ROOT)
    current = (ROOT / 'etc/ursa/ursa.conf.sample').read_text()
    assert out.read_text() == current, (
        'etc/ursa/ursa.conf.sample is stale: run "tox -e genconfig" (or '
        'oslo-config-generator --config-file '
        'etc/ursa/ursa-config-generator.conf) and commit the result')

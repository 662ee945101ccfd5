"""``ursa cluster status --watch SECONDS``: the interval is checked
before any master is asked (the live view itself is tested against a real
cluster in tests/functional/cluster/test_status_watch.py)."""

import pytest

from cinder_ursa.cmd.admin.cluster import ClusterStatus


def _parse(*argv):
    return ClusterStatus(None, None).get_parser(
        'ursa cluster status').parse_args(list(argv))


@pytest.mark.parametrize('interval', ['0', '-1', 'x', '1e9', 'nan'])
def test_a_bad_interval_is_refused_with_a_message(interval, capsys):
    with pytest.raises(SystemExit) as e:
        _parse('--watch', interval)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert '--watch' in err and 'Traceback' not in err


def test_watch_takes_a_default_interval_and_is_off_by_default():
    assert _parse().watch is None
    assert _parse('--watch').watch == 2.0
    assert _parse('--watch', '0.5').watch == 0.5

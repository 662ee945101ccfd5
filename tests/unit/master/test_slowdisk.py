"""Slow-disk judging (master/slowdisk.py): a server is flagged slow when
its p99 stays above factor x the median of its peers' and above the floor
for the period, with enough samples and servers, and clears once below
half that for the period."""

import pytest

from cinder_ursa.master import slowdisk

PERIOD = 10.0


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def rep(p99, count=100, kind='read'):
    return {kind: {'count': count, 'p50': p99 / 2, 'p99': p99,
                   'mean': p99 / 2}, 'window': 3.0}


@pytest.fixture
def judge():
    clock = Clock()
    j = slowdisk.SlowDiskJudge(period=PERIOD, factor=4.0, min_latency=0.020,
                               min_samples=20, stale_after=5.0, clock=clock,
                               wall=lambda: 12345.0)
    j.test_clock = clock
    return j


def feed(j, reports, seconds, step=1.0):
    """Report ``reports`` ({sid: report}) every ``step`` s for
    ``seconds``, judging after each round."""
    end = j.test_clock.t + seconds
    while j.test_clock.t < end - 1e-9:
        j.test_clock.t += step
        for sid, r in reports.items():
            j.note(sid, r)
        j.judge()


def test_a_server_far_above_its_peers_for_the_period_is_slow(judge):
    reports = {1: rep(0.002), 2: rep(0.003), 3: rep(0.004), 4: rep(0.050)}
    feed(judge, reports, PERIOD - 2)
    assert judge.slow_servers() == []       # not for the whole period yet
    feed(judge, reports, 3)
    assert judge.slow_servers() == [4]
    assert judge.server(4)['slow'] is True
    assert judge.server(4)['slow_since'] == 12345.0
    assert judge.server(1) == {
        'latency': {'read_p50': 0.001, 'read_p99': 0.002,
                    'read_samples': 100, 'write_p50': None,
                    'write_p99': None, 'write_samples': 0,
                    'sync_p50': None, 'sync_p99': None, 'sync_samples': 0,
                    'window': 3.0},
        'slow': False, 'slow_since': None}
    assert judge.flags() == {'1': 0, '2': 0, '3': 0, '4': 1}
    assert judge.latencies()[('4', 'read', '0.99')] == 0.050


def test_the_median_of_the_others_is_the_reference(judge):
    # 0.050 > 4 x median(0.002, 0.010, 0.020) = 0.040: slow; a lone fast
    # peer does not make the others slow.
    feed(judge, {1: rep(0.002), 2: rep(0.010), 3: rep(0.020),
                 4: rep(0.050)}, PERIOD + 1)
    assert judge.slow_servers() == [4]


def test_not_above_factor_times_the_median_is_not_slow(judge):
    # 0.050 < 4 x median(0.002, 0.015, 0.020) = 0.060.
    feed(judge, {1: rep(0.002), 2: rep(0.015), 3: rep(0.020),
                 4: rep(0.050)}, PERIOD * 2)
    assert judge.slow_servers() == []


def test_below_the_floor_is_never_slow(judge):
    # 100 times its peers, but 15 ms: a fast idle cluster's noise.
    feed(judge, {1: rep(0.0001), 2: rep(0.0001), 3: rep(0.00015),
                 4: rep(0.015)}, PERIOD * 2)
    assert judge.slow_servers() == []


def test_too_few_samples_or_servers_judge_nothing(judge):
    feed(judge, {1: rep(0.002), 2: rep(0.002), 3: rep(0.002),
                 4: rep(0.200, count=19)}, PERIOD * 2)
    assert judge.slow_servers() == []
    # Two servers alone: nothing to compare with.
    feed(judge, {1: rep(0.002), 4: rep(0.200)}, PERIOD * 2)
    assert judge.slow_servers() == []


def test_three_servers_are_enough(judge):
    feed(judge, {1: rep(0.002), 2: rep(0.003), 3: rep(0.100)}, PERIOD + 1)
    assert judge.slow_servers() == [3]


def test_kinds_are_compared_with_the_same_kind(judge):
    # Syncs are slower than reads everywhere: only server 4's writes are
    # far above the others' writes.
    reports = {}
    for sid, w in ((1, 0.001), (2, 0.001), (3, 0.001), (4, 0.030)):
        r = rep(0.001)
        r.update(rep(w, kind='write'))
        r.update(rep(0.025, kind='sync'))
        reports[sid] = r
    feed(judge, reports, PERIOD + 1)
    assert judge.slow_servers() == [4]


def test_an_interruption_starts_the_period_again(judge):
    fast = {1: rep(0.002), 2: rep(0.002), 3: rep(0.002), 4: rep(0.002)}
    slow = {**fast, 4: rep(0.080)}
    feed(judge, slow, PERIOD - 2)
    feed(judge, fast, 1)
    feed(judge, slow, PERIOD - 2)
    assert judge.slow_servers() == []
    feed(judge, slow, 3)
    assert judge.slow_servers() == [4]


def test_it_clears_with_hysteresis(judge):
    peers = {1: rep(0.002), 2: rep(0.002), 3: rep(0.002)}
    feed(judge, {**peers, 4: rep(0.080)}, PERIOD + 1)
    assert judge.slow_servers() == [4]
    # Between factor/2 and factor times the median (and above the
    # floor): still slow, however long.
    peers = {1: rep(0.010), 2: rep(0.010), 3: rep(0.010)}
    feed(judge, {**peers, 4: rep(0.030)}, PERIOD * 2)
    assert judge.slow_servers() == [4]
    # Below factor/2 x median: clears after the period.
    feed(judge, {**peers, 4: rep(0.015)}, PERIOD - 2)
    assert judge.slow_servers() == [4]
    feed(judge, {**peers, 4: rep(0.015)}, 3)
    assert judge.slow_servers() == []
    assert judge.server(4)['slow_since'] is None


def test_without_evidence_the_flag_stays(judge):
    peers = {1: rep(0.002), 2: rep(0.002), 3: rep(0.002)}
    feed(judge, {**peers, 4: rep(0.080)}, PERIOD + 1)
    feed(judge, {**peers, 4: rep(0.002, count=0)}, PERIOD * 2)
    assert judge.slow_servers() == [4]


def test_a_silent_server_is_forgotten(judge):
    peers = {1: rep(0.002), 2: rep(0.002), 3: rep(0.002)}
    feed(judge, {**peers, 4: rep(0.080)}, PERIOD + 1)
    feed(judge, peers, 3)
    assert judge.slow_servers() == [4]      # not stale yet (5 s)
    feed(judge, peers, 3)
    assert judge.slow_servers() == []
    assert judge.server(4) == {'latency': None, 'slow': False,
                               'slow_since': None}
    assert '4' not in judge.flags()


def test_a_report_without_latency_forgets_the_server(judge):
    peers = {1: rep(0.002), 2: rep(0.002), 3: rep(0.002)}
    feed(judge, {**peers, 4: rep(0.080)}, PERIOD + 1)
    judge.note(4, None)     # its disk failed
    assert judge.slow_servers() == []


def test_bad_numbers_count_as_absent(judge):
    judge.note(1, {'read': {'count': 'x', 'p99': 'y', 'p50': True},
                   'write': 5, 'window': -1})
    assert judge.server(1)['latency']['read_samples'] == 0
    assert judge.server(1)['latency']['read_p99'] is None


def test_the_window_told_to_the_servers_is_a_third_of_the_period():
    assert slowdisk.SlowDiskJudge(period=60).window == 20.0
    assert slowdisk.SlowDiskJudge(period=1.5).window == 1.0

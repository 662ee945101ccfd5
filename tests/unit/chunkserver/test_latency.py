"""A chunk server's rolling latency window (chunkserver/latency.py)."""

import pytest

from cinder_ursa.chunkserver import latency


def test_quantiles_of_the_window():
    w = latency.Window(60.0)
    for i in range(99):
        w.add(0.001, 100.0 + i * 0.1)
    w.add(0.5, 110.0)
    s = w.summary(110.0)
    assert s['count'] == 100
    assert s['p50'] == pytest.approx(0.001, rel=0.5)
    # The 99th of 100 samples: the slow one is the 100th.
    assert s['p99'] < 0.002
    w.add(0.5, 110.0)
    assert w.summary(110.0)['p99'] == pytest.approx(0.5, rel=0.5)
    assert w.summary(110.0)['mean'] == pytest.approx(
        (99 * 0.001 + 1.0) / 101)


def test_old_samples_leave_the_window():
    w = latency.Window(6.0)          # buckets of 1 s
    w.add(0.2, 100.5)
    assert w.summary(105.9)['count'] == 1
    assert w.summary(106.0)['count'] == 0
    assert w.summary(106.0)['p99'] is None
    w.add(0.001, 106.2)              # reuses the first bucket's slot
    s = w.summary(106.3)
    assert s['count'] == 1 and s['p99'] < 0.01


def test_report_and_window_change():
    d = latency.DiskLatency(60.0)
    d.read.add(0.003, 10.0)
    d.sync.add(0.02, 10.0)
    r = d.report(10.0)
    assert r['window'] == 60.0
    assert r['read']['count'] == 1 and r['write']['count'] == 0
    assert r['sync']['count'] == 1
    d.set_window(None)               # a master that says nothing
    assert d.report(10.0)['read']['count'] == 1
    d.set_window(3.0)
    r = d.report(10.0)
    assert r['window'] == 3.0 and r['read']['count'] == 0


def test_quantile_is_monotonic_and_bounded():
    counts = [0] * (len(latency.BOUNDS) + 1)
    counts[-1] = 5                   # beyond the highest bound
    assert latency.quantile(counts, 0.99) >= latency.BOUNDS[-1]
    counts = [1] * (len(latency.BOUNDS) + 1)
    qs = [latency.quantile(counts, q / 10) for q in range(1, 10)]
    assert qs == sorted(qs)

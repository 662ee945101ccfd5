"""The QoS token buckets, on a fake clock."""

from cinder_ursa.client import qos


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_burst_then_the_rate():
    clock = Clock()
    lim = qos.Limiter({'total_iops_sec': 10}, clock=clock)
    # One second of burst goes through at once ...
    assert [lim.delay('read', 4096) for _ in range(10)] == [0.0] * 10
    # ... then each request waits its turn: 0.1 s, 0.2 s, ...
    waits = [lim.delay('write', 4096) for _ in range(3)]
    assert [round(w, 6) for w in waits] == [0.1, 0.2, 0.3]
    # After enough time the bucket is full again (never more than 1 s).
    clock.now += 60
    assert [lim.delay('read', 4096) for _ in range(10)] == [0.0] * 10
    assert lim.delay('read', 4096) > 0


def test_bytes_and_per_direction_limits():
    clock = Clock()
    lim = qos.Limiter({'read_bytes_sec': 1 << 20, 'write_iops_sec': 2},
                      clock=clock)
    assert lim.delay('read', 1 << 20) == 0.0
    assert round(lim.delay('read', 1 << 19), 6) == 0.5
    # Writes are not limited by the read limit, only by their own.
    assert lim.delay('write', 1 << 30) == 0.0
    assert lim.delay('write', 1) == 0.0
    assert round(lim.delay('write', 1), 6) == 0.5


def test_update_in_place_and_no_limits():
    clock = Clock()
    lim = qos.Limiter({}, clock=clock)
    assert not lim and lim.delay('read', 1 << 30) == 0.0
    lim.update({'total_iops_sec': 1, 'bogus': 5, 'write_iops_sec': 0})
    assert lim and lim.limits == {'total_iops_sec': 1}
    assert lim.delay('read', 1) == 0.0
    assert lim.delay('read', 1) == 1.0
    lim.update({})
    assert not lim

"""A chunk server's lease on the master's word: how long the epochs it
knows are surely the master's (see ControlMixin.master_lease_valid)."""

from cinder_ursa.chunkserver import controlplane


class _Loop:
    now = 0.0

    def time(self):
        return self.now


class _Server(controlplane.ControlMixin):
    def __init__(self):
        self._loop = _Loop()
        self._heartbeat_interval = 1.0
        self._master_lease = float('-inf')


def test_no_lease_before_the_master_answered():
    assert not _Server().master_lease_valid()


def test_the_lease_runs_server_timeout_from_the_send_of_the_answered_beat():
    """From when the heartbeat was sent, not answered: the master may
    have seen it at once and marks the server down server_timeout later."""
    s = _Server()
    s._loop.now = 11.5              # the answer came late
    s._heard(10.0, {'server_timeout': 3.0})
    s._loop.now = 12.9
    assert s.master_lease_valid()
    s._loop.now = 13.0
    assert not s.master_lease_valid()


def test_a_master_that_does_not_say_gives_two_heartbeats():
    s = _Server()
    s._heard(10.0, {'ok': True})
    s._loop.now = 11.9
    assert s.master_lease_valid()
    s._loop.now = 12.0
    assert not s.master_lease_valid()

"""``ursa volume show`` shows the QoS limits Ursa enforces on a volume
(Cinder's back-end QoS specs) and whether it is multiattach: an operator
checking what a volume type did needs both.  Run in-process."""

from cinder_ursa.cmd.admin import volumes

VOLUME = {
    'id': 'a49eecf7', 'name': 'volume-1', 'size': 1 << 30, 'replicas': 3,
    'min_replicas': 2, 'chunk_size': 4 << 20, 'stripe_unit': 4 << 20,
    'stripe_count': 1, 'status': 'available', 'lease': None,
}


class Master:
    def __init__(self, volume):
        self.shown = volume

    def volume(self, ref):
        assert ref == self.shown['name']
        return self.shown


class App:
    def __init__(self, volume):
        self.m = Master(volume)

    def master(self):
        return self.m


def show(volume):
    cmd = volumes.VolumeShow(App(volume), None)
    cols, values = cmd.take_action(
        cmd.get_parser('ursa volume show').parse_args(['volume-1']))
    return dict(zip(cols, values, strict=True))


def test_the_limits_and_multiattach_are_shown():
    got = show(dict(VOLUME, qos={'write_iops_sec': 50,
                                 'total_iops_sec': 400},
                    multiattach=True))
    assert got['qos'] == 'total_iops_sec=400, write_iops_sec=50'
    assert got['multiattach'] is True


def test_no_limits_show_as_a_dash():
    got = show(dict(VOLUME, qos={}))
    assert got['qos'] == '-' and got['multiattach'] is False

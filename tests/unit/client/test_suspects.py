"""A chunk server that did not answer in time is read last for a while."""

from cinder_ursa.client import cluster as cluster_mod


def test_suspects_are_read_last_until_they_expire(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(cluster_mod.time, 'monotonic', lambda: now[0])
    cl = cluster_mod.Cluster(['http://127.0.0.1:1'], b'k' * 32)
    replicas = [(1, 'h', 1), (2, 'h', 2), (3, 'h', 3)]
    assert cl.read_order(replicas) == replicas
    cl.suspect(1)
    assert cl.read_order(replicas) == [(2, 'h', 2), (3, 'h', 3), (1, 'h', 1)]
    cl.suspect(3)
    assert cl.read_order(replicas) == [(2, 'h', 2), (1, 'h', 1), (3, 'h', 3)]
    now[0] += cluster_mod.SUSPECT_FOR + 1
    assert cl.read_order(replicas) == replicas

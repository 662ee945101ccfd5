"""The repair planner on records alone: what waits, what is copied first,
where the copy goes, and how many jobs a server takes part in."""

import random

from cinder_ursa.master import repair

NOW = 10000.0
GRACE = 600.0


def servers(n, racks=None, **states):
    """Servers 1..n, each on its own host (rack r<i> unless ``racks``);
    ``states``: s<id>=dict of fields to change."""
    out = {}
    for i in range(1, n + 1):
        out[i] = {'id': i, 'host': 'h%d' % i,
                  'rack': racks[i - 1] if racks else 'r%d' % i,
                  'state': 'up', 'free': 10 ** 12, 'maintenance': False,
                  'down_since': None}
        out[i].update(states.get('s%d' % i, {}))
    return out


def chunk(replicas, joining=(), lost=(), index=0, volume='v', epoch=5):
    return {'volume_id': volume, 'index': index, 'epoch': epoch,
            'replicas': list(replicas), 'joining': list(joining),
            'lost': list(lost)}


def down(since=NOW - 10, maintenance=False):
    return {'state': 'down', 'down_since': since, 'maintenance': maintenance}


def plan(chunks, srv, goal=3, **kwargs):
    goals = {c['volume_id']: goal for c in chunks}
    return repair.plan(chunks, goals, srv, NOW, GRACE,
                       rng=random.Random(1), **kwargs)


def test_a_whole_chunk_needs_nothing():
    jobs, summary = plan([chunk([1, 2, 3])], servers(4))
    assert jobs == [] and summary == {}


def test_a_server_down_within_the_grace_period_is_waited_for():
    srv = servers(4, s3=down())
    jobs, summary = plan([chunk([1, 2], lost=[3])], srv)
    assert jobs == []
    assert summary == {'degraded': 1, 'waiting': 1}


def test_past_the_grace_period_the_copy_goes_elsewhere():
    srv = servers(4, s3=down(since=NOW - GRACE - 1))
    jobs, summary = plan([chunk([1, 2], lost=[3])], srv)
    assert jobs == [repair.Job('v', 0, 5, 1, 4, repair.UNDER)]
    assert summary == {'degraded': 1}


def test_maintenance_waits_however_long():
    srv = servers(4, s3=down(since=NOW - 100 * GRACE, maintenance=True))
    jobs, summary = plan([chunk([1, 2], lost=[3])], srv)
    assert jobs == [] and summary['waiting'] == 1


def test_a_server_whose_disk_failed_is_not_waited_for_nor_a_target():
    srv = servers(5, s3={'state': 'failed', 'down_since': NOW - 1},
                  s4={'state': 'failed', 'down_since': NOW - 1,
                      'maintenance': True})
    jobs, summary = plan([chunk([1, 2], lost=[3]),
                          chunk([1, 2], lost=[4], index=1)], srv)
    assert jobs == [repair.Job('v', 0, 5, 1, 5, repair.UNDER),
                    repair.Job('v', 1, 5, 1, 5, repair.UNDER)]
    assert summary == {'degraded': 2}


def test_a_chunk_at_one_copy_never_waits():
    srv = servers(4, s2=down(), s3=down())
    jobs, _ = plan([chunk([1], lost=[2, 3])], srv)
    assert jobs == [repair.Job('v', 0, 5, 1, 4, repair.ONE_COPY)]


def test_more_missing_than_expected_back_is_copied_at_once():
    # Two copies missing, one of their servers expected back, the other
    # never recorded (a replica set made smaller than the goal).
    srv = servers(5, s3=down())
    jobs, _ = plan([chunk([1, 2], lost=[3])], srv, goal=4)
    assert [j.target for j in jobs] in ([4], [5])


def test_a_returning_server_is_the_target():
    srv = servers(5)
    jobs, _ = plan([chunk([1, 2], lost=[3])], srv)
    assert jobs == [repair.Job('v', 0, 5, 1, 3, repair.RETURNING)]


def test_joining_copies_count_and_are_not_targets_again():
    jobs, summary = plan([chunk([1, 2], joining=[3], lost=[3])], servers(5))
    assert jobs == [] and summary == {}


def test_targets_are_in_failure_domains_the_chunk_does_not_use():
    # Racks: 1,2 in a; 3,4 in b; 5 in c.  The chunk is on 1 (a) and 3 (b).
    srv = servers(5, racks=['a', 'a', 'b', 'b', 'c'])
    for seed in range(20):
        jobs, _ = repair.plan([chunk([1, 3], lost=[9])], {'v': 3}, srv,
                              NOW, GRACE, level='rack',
                              rng=random.Random(seed))
        assert [j.target for j in jobs] == [5]
    # No rack left: blocked, and said so.
    srv[5]['state'] = 'down'
    jobs, summary = repair.plan([chunk([1, 3])], {'v': 3}, srv, NOW, GRACE,
                                level='rack')
    assert jobs == [] and summary == {'degraded': 1, 'blocked': 1}


def test_a_returning_server_in_a_domain_now_used_is_not_taken():
    srv = servers(4, racks=['a', 'b', 'c', 'c'])
    # 3 was dropped and replaced by 4, in the same rack.
    jobs, _ = repair.plan([chunk([1, 4], lost=[3])], {'v': 3}, srv, NOW,
                          GRACE, level='rack')
    assert [j.target for j in jobs] == [2]   # rack b, the one left


def test_servers_in_maintenance_or_down_take_no_new_copy():
    srv = servers(5, s4={'maintenance': True}, s5=down())
    jobs, summary = plan([chunk([1, 2], lost=[])], srv)
    assert [j.target for j in jobs] == [3]
    srv[3]['state'] = 'down'
    jobs, summary = plan([chunk([1, 2])], srv)
    assert jobs == [] and summary['blocked'] == 1


def test_one_copy_chunks_get_the_slots_first_and_limits_hold():
    srv = servers(8)
    chunks = [chunk([1, 2], index=i) for i in range(4)]
    chunks += [chunk([1], index=10 + i) for i in range(3)]
    jobs, summary = plan(chunks, srv, per_server=2)
    # Server 1 is the primary of everything: its two slots go to one-copy
    # chunks; the rest wait for the next round.
    assert [(j.index, j.priority, j.source) for j in jobs] == [
        (10, repair.ONE_COPY, 1), (11, repair.ONE_COPY, 1)]
    assert summary == {'degraded': 7, 'deferred': 5}
    load = {}
    for j in jobs:
        for sid in (j.source, j.target):
            load[sid] = load.get(sid, 0) + 1
    assert max(load.values()) <= 2


def test_servers_to_avoid_are_no_target():
    jobs, _ = plan([chunk([1, 2])], servers(4), avoid={3})
    assert [j.target for j in jobs] == [4]
    jobs, summary = plan([chunk([1, 2])], servers(4), avoid={3, 4})
    assert jobs == [] and summary['blocked'] == 1


def test_busy_servers_count_against_the_limit():
    srv = servers(4)
    jobs, summary = plan([chunk([1, 2])], srv, busy={1: 2})
    assert jobs == [] and summary['deferred'] == 1
    jobs, _ = plan([chunk([1, 2])], srv, busy={3: 2})
    assert [j.target for j in jobs] == [4]


def test_a_busy_returning_server_is_waited_for_not_copied_around():
    """Its copy is most of the data: a chunk whose old server is busy
    with other copies waits, rather than copying everything elsewhere;
    an old server a copy just failed to is passed over."""
    srv = servers(4)
    jobs, summary = plan([chunk([1, 2], lost=[3])], srv, busy={3: 2})
    assert jobs == [] and summary == {'degraded': 1, 'deferred': 1}
    jobs, _ = plan([chunk([1, 2], lost=[3])], srv, busy={3: 2}, avoid={3})
    assert [j.target for j in jobs] == [4]


def test_a_chunk_whose_copies_are_all_down_is_unavailable_not_planned():
    # The store never drops a chunk's last replica: its server being down
    # is how a chunk has nothing to copy from.
    for state in (down(), down(maintenance=True)):
        srv = servers(4, s1=state, s2=down(), s3=down())
        jobs, summary = plan([chunk([1], lost=[2, 3])], srv)
        assert jobs == [] and summary == {'degraded': 1, 'unavailable': 1}
    srv = servers(3, s1=down())
    jobs, summary = plan([chunk([], lost=[1])], srv)
    assert jobs == [] and summary == {'degraded': 1, 'unavailable': 1}


def test_the_source_is_the_primary_and_a_dead_primary_is_waited_for():
    srv = servers(4, s3=down(since=NOW - GRACE - 1))
    jobs, _ = plan([chunk([1, 2], lost=[3])], srv)
    assert [(j.source, j.target) for j in jobs] == [(1, 4)]
    srv[1].update(down())
    jobs, summary = plan([chunk([1, 2], lost=[3])], srv)
    assert jobs == [] and summary == {'degraded': 1, 'deferred': 1}


def test_a_lost_server_back_up_but_in_maintenance_is_waited_for():
    srv = servers(5, s3={'maintenance': True})
    jobs, summary = plan([chunk([1, 2], lost=[3])], srv)
    assert jobs == [] and summary == {'degraded': 1, 'waiting': 1}


def test_replicas_unknown_to_the_records_block_the_chunk():
    srv = servers(4, racks=['a', 'b', 'a', 'b'])
    del srv[1]
    jobs, summary = repair.plan([chunk([1, 2])], {'v': 3}, srv, NOW, GRACE,
                                level='rack')
    assert jobs == [] and summary == {'degraded': 1, 'blocked': 1}


def test_a_lost_id_also_in_the_replica_set_is_not_expected_back():
    srv = servers(4, s2=down())
    jobs, summary = plan([chunk([1, 3], lost=[3, 2])], srv)
    assert summary == {'degraded': 1, 'waiting': 1}
    jobs, summary = plan([chunk([1, 3], lost=[3])], srv)
    assert [j.target for j in jobs] == [4]


def test_chunks_whose_sources_are_busy_are_deferred_and_counted():
    jobs, summary = plan([chunk([1, 2])], servers(4), busy={1: 2})
    assert jobs == [] and summary == {'degraded': 1, 'deferred': 1}


def test_chunks_of_volumes_gone_are_ignored():
    jobs, summary = repair.plan([chunk([1])], {}, servers(3), NOW, GRACE)
    assert jobs == [] and summary == {}


def test_a_volume_with_one_replica_is_whole_with_one():
    jobs, summary = plan([chunk([1])], servers(3), goal=1)
    assert jobs == [] and summary == {}


# --- moves: drain, surplus replicas, rebalance ---------------------------

def draining(**extra):
    return dict({'draining': True}, **extra)


def test_a_draining_server_is_never_a_target():
    srv = servers(4, s3=draining())
    for seed in range(20):
        jobs, _ = repair.plan([chunk([1, 2], lost=[9])], {'v': 3}, srv, NOW,
                              GRACE, rng=random.Random(seed))
        assert [j.target for j in jobs] == [4]
    # Nor a returning one: its old copy is not brought up to date.
    jobs, _ = plan([chunk([1, 2], lost=[3])], srv)
    assert [(j.target, j.priority) for j in jobs] == [(4, repair.UNDER)]


def test_a_draining_server_down_is_not_waited_for():
    srv = servers(4, s3=down(maintenance=True))
    srv[3]['draining'] = True
    jobs, summary = plan([chunk([1, 2], lost=[3])], srv)
    assert [(j.target, j.priority) for j in jobs] == [(4, repair.UNDER)]


def test_a_chunk_on_a_draining_server_is_copied_then_that_replica_retired():
    srv = servers(4, s2=draining())
    jobs, summary = plan([chunk([1, 2, 3])], srv)
    assert jobs == [repair.Job('v', 0, 5, 1, 4, repair.DRAIN, 2)]
    assert summary == {'draining': 1, 'drain': 1}


def test_a_draining_primary_is_the_source_and_is_retired():
    jobs, _ = plan([chunk([2, 1, 3])], servers(4, s2=draining()))
    assert jobs == [repair.Job('v', 0, 5, 2, 4, repair.DRAIN, 2)]


def test_the_draining_servers_domain_is_free_for_the_copy():
    # Racks a, b, c; the chunk uses all three; 4 shares rack a with 1.
    srv = servers(4, racks=['a', 'b', 'c', 'a'], s1=draining())
    jobs, _ = repair.plan([chunk([1, 2, 3])], {'v': 3}, srv, NOW, GRACE,
                          level='rack')
    assert [(j.target, j.retire) for j in jobs] == [(4, 1)]


def test_a_drain_with_nowhere_to_go_is_blocked_and_counted():
    jobs, summary = plan([chunk([1, 2, 3])], servers(3, s3=draining()))
    assert jobs == []
    assert summary == {'draining': 1, 'moves_blocked': 1}


def test_repairs_take_the_slots_before_drains():
    srv = servers(6, s2=draining())
    chunks = [chunk([1, 2, 3], index=0), chunk([1, 3], index=1)]
    jobs, summary = plan(chunks, srv, per_server=1)
    assert [(j.index, j.priority) for j in jobs] == [(1, repair.UNDER)]
    assert summary['draining'] == 1


def test_a_replica_too_many_is_retired_draining_first_then_the_fullest():
    srv = servers(5, s3=draining())
    jobs, summary = plan([chunk([1, 2, 3, 4])], srv)
    assert jobs == [repair.Job('v', 0, 5, 3, None, repair.TRIM, 3)]
    assert summary == {'trim': 1}
    # Nobody draining (a drain cancelled mid-way): the fullest server's,
    # the primary last.
    srv = servers(5)
    others = [chunk([2, 5, 3], index=i) for i in range(1, 3)]
    jobs, _ = plan([chunk([1, 2, 3, 4])] + others, srv)
    assert [(j.index, j.retire) for j in jobs] == [(0, 3)]
    jobs, _ = plan([chunk([2, 1, 3, 4])] + others[:1], srv)
    assert [(j.index, j.retire) for j in jobs] == [(0, 3)]


def test_a_replica_too_many_in_a_shared_domain_goes_first():
    srv = servers(4, racks=['a', 'b', 'c', 'a'])
    jobs, _ = repair.plan([chunk([1, 2, 3, 4])], {'v': 3}, srv, NOW, GRACE,
                          level='rack')
    assert [j.retire for j in jobs] == [4]


def test_moves_leave_chunks_with_copies_being_made_or_servers_down_alone():
    srv = servers(5, s2=draining())
    jobs, summary = plan([chunk([1, 2, 3], joining=[4])], srv)
    assert jobs == [] and summary == {}
    srv = servers(5, s2=draining(), s3=down())
    jobs, summary = plan([chunk([1, 2, 3, 4])], srv)
    assert jobs == []


def full_and_empty(n_chunks=6):
    """Servers 1-3 hold every chunk, 4 none."""
    return [chunk([1, 2, 3], index=i) for i in range(n_chunks)]


def test_rebalance_moves_a_few_replicas_to_the_emptiest():
    jobs, summary = plan(full_and_empty(), servers(4), rebalance=2)
    assert len(jobs) == 2 and summary == {'rebalance': 2}
    assert all(j.priority == repair.REBALANCE and j.target == 4 and
               j.source == 1 and j.retire in (1, 2, 3) for j in jobs)
    # Two moves from different servers: both were the fullest in turn.
    assert len({j.retire for j in jobs}) == 2
    assert len({j.index for j in jobs}) == 2
    jobs, _ = plan(full_and_empty(), servers(4), rebalance=0)
    assert jobs == []


def test_rebalance_stops_within_the_threshold_and_converges():
    chunks = full_and_empty(12)
    srv = servers(4)
    for _ in range(20):
        jobs, _ = plan(chunks, srv, rebalance=3, threshold=1)
        if not jobs:
            break
        for j in jobs:
            c = chunks[j.index]
            c['replicas'] = [s for s in c['replicas'] if s != j.retire] + [
                j.target]
    counts = repair._counts(chunks, srv)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert counts[4] == 9       # 36 replicas over 4 servers
    for c in chunks:
        assert len(set(c['replicas'])) == 3


def test_rebalance_waits_for_repairs_drains_and_running_copies():
    chunks = full_and_empty() + [chunk([1, 2], index=50)]
    jobs, _ = plan(chunks, servers(5), rebalance=2)
    assert [j.priority for j in jobs] == [repair.UNDER]
    jobs, _ = plan(full_and_empty(), servers(4), rebalance=2, busy={1: 1})
    assert jobs == []
    jobs, _ = plan(full_and_empty(), servers(5, s5=draining()), rebalance=2)
    assert [j.target for j in jobs] == [4, 4]   # 5 drains: no target
    jobs, summary = plan(full_and_empty(), servers(5, s3=draining()),
                         rebalance=2)
    assert {j.priority for j in jobs} == {repair.DRAIN}


def test_rebalance_keeps_failure_domains_distinct():
    # 4 shares rack a with 1: only 1's replicas may go to it.
    srv = servers(4, racks=['a', 'b', 'c', 'a'])
    jobs, _ = repair.plan(full_and_empty(), {'v': 3}, srv, NOW, GRACE,
                          level='rack', rebalance=3, threshold=1)
    assert jobs and all(j.retire == 1 and j.target == 4 for j in jobs)


def test_the_rebalance_threshold_is_a_percentage_of_the_average():
    # Counts 10, 10, 10, 0: an average of 7.5 replicas per server.
    jobs, _ = plan(full_and_empty(10), servers(4), rebalance=1,
                   threshold=100)
    assert len(jobs) == 1               # 10 > 7.5
    jobs, _ = plan(full_and_empty(10), servers(4), rebalance=1,
                   threshold=150)
    assert jobs == []                   # 10 <= 11.25


def test_rebalance_never_fills_a_server_nearly_full():
    srv = servers(4)
    for s in srv.values():
        s['capacity'] = 100
    srv[4]['free'] = 9
    jobs, _ = plan(full_and_empty(), srv, rebalance=2)
    assert jobs == []
    srv[4]['free'] = 10
    jobs, _ = plan(full_and_empty(), srv, rebalance=2)
    assert [j.target for j in jobs] == [4, 4]


def test_chunks_whose_writes_are_refused_come_first_and_never_wait():
    # min_replicas 3 of 3: a chunk at two replicas refuses writes (a
    # client is blocked on it); its lost server, down within the grace
    # period, is not waited for, and it goes before a one-copy chunk of
    # a volume that still takes writes at one copy.
    srv = servers(6, s5=down())
    blocked = chunk([1, 2], lost=[5], index=3, volume='strict')
    blocked['floor'] = 3
    lone = chunk([1], index=0, volume='lax')
    lone['floor'] = 1
    under = chunk([1, 2], index=1, volume='lax')
    under['floor'] = 1
    jobs, summary = repair.plan(
        [lone, under, blocked], {'strict': 3, 'lax': 3}, srv, NOW, GRACE,
        rng=random.Random(1), per_server=2)
    assert [(j.volume_id, j.index, j.priority) for j in jobs] == [
        ('strict', 3, repair.BLOCKED), ('lax', 0, repair.ONE_COPY)]
    assert summary == {'degraded': 3, 'deferred': 1}
    # Without the floor, the two-replica chunk waits for its server.
    del blocked['floor']
    jobs, summary = repair.plan([blocked], {'strict': 3}, srv, NOW, GRACE,
                                rng=random.Random(1))
    assert jobs == [] and summary == {'degraded': 1, 'waiting': 1}


def test_a_blocked_chunk_still_waits_for_a_server_in_maintenance():
    # min_replicas 3 of 3, the third replica's server in maintenance (an
    # operator restarting it): no full copy elsewhere meanwhile.
    srv = servers(5, s3=down(maintenance=True))
    c = chunk([1, 2], lost=[3])
    c['floor'] = 3
    jobs, summary = repair.plan([c], {'v': 3}, srv, NOW, GRACE,
                                rng=random.Random(1))
    assert jobs == [] and summary == {'degraded': 1, 'waiting': 1}
    # Back up but still flagged: it waits too.
    srv[3].update(state='up', down_since=None)
    jobs, summary = repair.plan([c], {'v': 3}, srv, NOW, GRACE,
                                rng=random.Random(1))
    assert jobs == [] and summary == {'degraded': 1, 'waiting': 1}

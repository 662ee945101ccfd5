"""The blocking facade works in a process eventlet has monkey-patched (as
cinder-volume runs by default) without stalling other green threads."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import eventlet
    eventlet.monkey_patch()
    import sys, time
    from cinder_ursa.client import sync
    url, key = sys.argv[1], sys.argv[2].encode()
    ticks = []
    def ticker():
        while True:
            ticks.append(time.time())
            eventlet.sleep(0.005)
    eventlet.spawn(ticker)
    eventlet.sleep(0)
    with sync.SyncCluster([url], key) as c:
        with c.open_volume('v') as v:
            start = len(ticks)
            for i in range(100):
                v.write(i * 65536, bytes([i]) * 65536)
            v.flush()
            data = v.read(0, 100 * 65536)
            during = len(ticks) - start
    assert data == b''.join(bytes([i]) * 65536 for i in range(100))
    print('OK', during)
''')


def test_sync_client_under_eventlet(make_cluster):
    cluster = make_cluster(3)
    cluster.client().create_volume('v', 16 * 1024 * 1024,
                                   chunk_size=4 * 1024 * 1024)
    r = subprocess.run([sys.executable, '-c', SCRIPT, cluster.master_url,
                        cluster.key.decode()], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    status, ticks = r.stdout.split()
    assert status == 'OK'
    # The green ticker kept running while the facade waited on I/O.
    assert int(ticks) > 5

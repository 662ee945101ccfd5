"""ursa-aio and the ursa CLI as an operator runs them."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from cinder_ursa.client import sync
from cinder_ursa.common import auth
from tests.fixtures.cluster import ursa
from tests.fixtures.processes import free_port_base
from tests.fixtures.services import unavailable
from tests.fixtures.wait import wait_for

MiB = 1024 * 1024


def start_aio(data_dir, port_base):
    proc = subprocess.Popen(
        [sys.executable, '-m', 'cinder_ursa.cmd.allinone',
         '--data-dir', data_dir, '--chunkservers', '3',
         '--port-base', str(port_base)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []

    def up():
        line = proc.stdout.readline()
        assert line, 'ursa-aio exited:\n' + ''.join(lines)
        lines.append(line)
        return line.startswith('Stop with')
    try:
        wait_for(up, 60, lambda: 'ursa-aio to come up:\n' + ''.join(lines),
                 interval=0)
    except AssertionError:
        proc.kill()
        raise
    return proc, ''.join(lines)


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


def test_aio_cli_import_export_and_restart(tmp_path):
    data_dir = str(tmp_path / 'aio')
    base = free_port_base(4)
    proc, banner = start_aio(data_dir, base)
    try:
        assert 'http://127.0.0.1:%d' % base in banner
        assert 'ursa-chunkserver 2 127.0.0.1:%d' % (base + 3) in banner
        assert 'volume demo through 3 replicas: OK' in banner
        status = json.loads(ursa(data_dir, 'cluster', 'status',
                                 '-f', 'json').stdout)
        assert status['health'] == 'HEALTH_OK'
        assert status['servers_up'] == 3
        servers = json.loads(ursa(data_dir, 'server', 'list',
                                  '-f', 'json').stdout)
        assert sorted(s['port'] for s in servers) == [base + 1, base + 2,
                                                      base + 3]
        vol = json.loads(ursa(data_dir, 'volume', 'create', 'disk', '40M',
                              '--chunk-size', '4M', '-f', 'json').stdout)
        assert vol['size'] == 40 * MiB and vol['replicas'] == 3

        # A raw image with holes: the volume stays thin after import.
        image = tmp_path / 'image.raw'
        payload = os.urandom(3 * MiB)
        with open(image, 'wb') as f:
            f.write(payload)
            f.seek(20 * MiB)
            f.write(payload)
            f.truncate(30 * MiB)
        ursa(data_dir, 'volume', 'import', str(image), 'disk')
        shown = json.loads(ursa(data_dir, 'volume', 'show', 'disk',
                                '-f', 'json').stdout)
        assert shown['allocated_chunks'] == 2
        # Space is reported from the chunk servers' heartbeats: the data
        # once (two 3 MiB runs) plus 8 bytes of metadata per 4 KiB block.
        def shown_allocated():
            shown = json.loads(ursa(data_dir, 'volume', 'show', 'disk',
                                    '-f', 'json').stdout)
            return shown if shown['allocated_bytes'] >= 6 * MiB else None
        shown = wait_for(shown_allocated, 30, 'heartbeats to report 6 MiB',
                         interval=0.5)
        assert 6 * MiB <= shown['allocated_bytes'] <= 6 * MiB + 64 * 1024
        assert shown['allocated_bytes_total'] == 3 * shown['allocated_bytes']
        out = tmp_path / 'out.raw'
        ursa(data_dir, 'volume', 'export', 'disk', str(out))
        exported = out.read_bytes()
        assert len(exported) == 40 * MiB
        assert exported[:30 * MiB] == image.read_bytes()
        assert exported[30 * MiB:] == bytes(10 * MiB)
        assert os.stat(out).st_blocks * 512 < 10 * MiB  # sparse
        check = ursa(data_dir, 'volume', 'check', 'disk', '-f', 'json')
        assert json.loads(check.stdout) == []
        names = [v['name'] for v in json.loads(ursa(
            data_dir, 'volume', 'list', '-f', 'json').stdout)]
        assert names == ['demo', 'disk']
        missing = ursa(data_dir, 'volume', 'show', 'nope', check=False)
        assert missing.returncode != 0
        assert 'not found' in missing.stderr
    finally:
        stop(proc)

    # Same data dir: every volume and byte is still there.
    proc, banner = start_aio(data_dir, base)
    try:
        assert 'Created volume' not in banner
        ursa(data_dir, 'volume', 'export', 'disk', str(out))
        assert out.read_bytes()[:30 * MiB] == image.read_bytes()
        ursa(data_dir, 'volume', 'delete', 'disk')
        names = [v['name'] for v in json.loads(ursa(
            data_dir, 'volume', 'list', '-f', 'json').stdout)]
        assert names == ['demo']
    finally:
        out_text = stop(proc)
    assert 'stopping' in out_text


def test_cli_without_a_key_says_what_to_do(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith('URSA_')}
    r = subprocess.run([sys.executable, '-m', 'cinder_ursa.cmd.cli',
                        '--master', 'http://127.0.0.1:9', 'volume', 'list'],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert 'cluster key' in r.stderr


def _pid(path):
    try:
        with open(path) as f:
            return json.load(f)['pid']
    except (FileNotFoundError, ValueError, KeyError):
        return None


def _kill_and_see_it_restarted(launcher, output, name, state_dir):
    endpoint = os.path.join(state_dir, 'endpoint.json')
    old = _pid(endpoint)
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: _pid(endpoint) not in (None, old), 60,
             lambda: '%s to be restarted:\n%s' % (name, ''.join(output)))
    wait_for(lambda: any('%s restarted' % name in line for line in output),
             30, lambda: 'the launcher to report the restart:\n'
             + ''.join(output))
    assert launcher.poll() is None, ''.join(output)
    assert any('%s exited (killed by SIGKILL)' % name in line
               for line in output), ''.join(output)


def test_aio_restarts_what_dies_and_the_demo_volume_stays_readable(tmp_path):
    """kill -9 of a chunk server and of the gateway while the demo volume
    is read: ursa-aio keeps running, says what died, restarts both, and
    no read fails (the client reads the replicas the killed server does
    not hold)."""
    if shutil.which('qemu-img') is None:
        unavailable('qemu-img is not installed')
    data_dir = str(tmp_path / 'aio')
    base = free_port_base(4)
    proc, banner = start_aio(data_dir, base)
    output = []
    drain = threading.Thread(target=lambda: output.extend(proc.stdout),
                             daemon=True)
    drain.start()
    stop_reading = threading.Event()
    reads, errors = [0], []
    key = auth.load_key(os.path.join(data_dir, 'cluster.key'))

    def reader():
        with sync.SyncCluster(['http://127.0.0.1:%d' % base], key) as c:
            with c.open_volume('demo', writable=False) as vol:
                first = vol.read(0, 4096)
                while not stop_reading.is_set():
                    try:
                        assert vol.read(0, 4096) == first
                        reads[0] += 1
                    except Exception as e:  # noqa: BLE001 - reported
                        errors.append(repr(e))
                    time.sleep(0.02)
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        assert 'volume demo through 3 replicas: OK' in banner
        wait_for(lambda: reads[0] > 5, 30, 'the first reads')
        for name, state in (('ursa-chunkserver 0', 'cs0'),
                            ('ursa-nbd', 'nbd')):
            _kill_and_see_it_restarted(proc, output, name,
                                       os.path.join(data_dir, state))
        before = reads[0]
        wait_for(lambda: reads[0] > before + 5, 30, 'reads after restarts')
        # The restarted gateway serves the demo volume where it did.
        nbd_port = int(banner.split('nbd://127.0.0.1:')[1].split('/')[0])
        out = tmp_path / 'first.raw'
        subprocess.run(['qemu-img', 'dd', '-f', 'raw', '-O', 'raw',
                        'bs=4096', 'count=1',
                        'if=nbd://127.0.0.1:%d/demo' % nbd_port,
                        'of=%s' % out], check=True, capture_output=True,
                       timeout=60)
        assert out.read_bytes().startswith(b'hello from ursa-aio')
        status = json.loads(ursa(data_dir, 'cluster', 'status',
                                 '-f', 'json').stdout)
        assert status['servers_up'] == 3
    finally:
        stop_reading.set()
        t.join(30)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        drain.join(10)
    assert errors == [], errors
    assert proc.returncode == 0, ''.join(output)

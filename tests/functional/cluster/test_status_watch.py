"""``ursa cluster status --watch``: a live view of a real cluster,
refreshed in place, that follows changes, rides out a master that stops
answering, and ends cleanly on Ctrl-C (SIGINT)."""

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from cinder_ursa.cmd.admin.cluster import ClusterStatus
from cinder_ursa.cmd.allinone import AllInOne


@pytest.fixture
def cluster(tmp_path):
    c = AllInOne(str(tmp_path / 'watch'), 1, port_base=0, server_timeout=3.0)
    c.start()
    try:
        yield c
    finally:
        c.stop(kill=True)


def _cli(conf_file, *args, **kw):
    return subprocess.Popen(
        [sys.executable, '-m', 'cinder_ursa.cmd.cli', 'cluster', 'status'] +
        list(args), env=dict(os.environ, URSA_CONFIG=conf_file),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


class Screen:
    """The refreshes a watching CLI prints, split at the clear-screen
    sequence, read in a thread."""

    def __init__(self, proc):
        self.proc = proc
        self.frames = queue.Queue()
        self._buf = ''
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while True:
            ch = self.proc.stdout.read(1)
            if not ch:
                self.frames.put(self._buf)
                self.frames.put(None)
                return
            self._buf += ch
            if self._buf.endswith(ClusterStatus.CLEAR):
                frame = self._buf[:-len(ClusterStatus.CLEAR)]
                self._buf = ''
                if frame:
                    self.frames.put(frame)

    def wait_for(self, pred, timeout=30):
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                frame = self.frames.get(timeout=1)
            except queue.Empty:
                continue
            if frame is None:
                break
            seen.append(frame)
            if pred(frame):
                return seen
        pytest.fail('no refresh matched within %d s; last frames: %r'
                    % (timeout, seen[-3:]))


def _value(frame):
    """The value line of a ``-f value -c volumes`` frame."""
    return frame.strip().splitlines()[-1]


def test_the_live_view_follows_the_cluster_and_stops_on_ctrl_c(cluster):
    proc = _cli(cluster.conf_file, '--watch', '0.2', '-f', 'value',
                '-c', 'volumes')
    try:
        screen = Screen(proc)
        frames = screen.wait_for(lambda f: _value(f) == '0')
        assert 'every 0.2 s (Ctrl-C to stop)' in frames[-1]
        cluster.client().create_volume('watched', 1 << 20)
        screen.wait_for(lambda f: _value(f) == '1')
        # A master that stops answering is an error in the view, not the
        # end of it; once it is back, the view is again the cluster's.
        cluster.kill_master()
        screen.wait_for(lambda f: 'error' in f.lower() or
                        'refused' in f.lower() or 'master' in f.lower(),
                        timeout=60)
        assert proc.poll() is None
        cluster.start_master()
        screen.wait_for(lambda f: _value(f) == '1', timeout=60)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0, proc.stderr.read()
        assert 'Traceback' not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

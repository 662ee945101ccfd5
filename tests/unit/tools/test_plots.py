"""The figures of ``--plot`` (tools/plots.py and the tools that draw
with it): fio's logs read as fio writes them, samples put into seconds,
and each tool's figure drawn from synthetic data of the shape its run
records, written as a real PNG of some substance."""

import importlib.machinery
import importlib.util
import math
import os
import struct
import subprocess
import sys
import types

import pytest

from tests import chaos

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))))), 'tools')
sys.path.insert(0, TOOLS)
import plots  # noqa: E402

PNG = b'\x89PNG\r\n\x1a\n'


def load_tool(name):
    """A tool of tools/ (a script without .py) as a module."""
    path = os.path.join(TOOLS, name)
    loader = importlib.machinery.SourceFileLoader(
        name.replace('-', '_'), path)
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def assert_png(path, min_width=600, min_height=400):
    """A PNG that matplotlib drew something into: the signature, an
    IHDR of a figure's size, more than 10 KB (a blank figure of that
    size compresses to a few KB)."""
    with open(path, 'rb') as f:
        data = f.read()
    assert data[:8] == PNG
    assert data[12:16] == b'IHDR'
    width, height = struct.unpack('!II', data[16:24])
    assert width >= min_width and height >= min_height, (width, height)
    assert len(data) > 10_000, len(data)
    return width, height


# -- fio's logs ---------------------------------------------------------------

# As fio 3.33 writes them with --log_avg_msec=1000 (time, value,
# direction, bs, offset); a newer fio's 6th column (priority); an older
# one's 4 columns.
FIO_LOG = """\
999, 889243, 1, 0, 0
1002, 56, 0, 0, 0

1999, 853251, 1, 0, 0, 0
2999, 747829, 1, 4096
"""


def test_a_fio_log_is_read_as_fio_writes_it():
    assert plots.parse_fio_log(FIO_LOG) == [
        plots.FioSample(999, 889243, 1, 0, 0),
        plots.FioSample(1002, 56, 0, 0, 0),
        plots.FioSample(1999, 853251, 1, 0, 0),
        plots.FioSample(2999, 747829, 1, 4096, 0)]


def test_a_line_not_of_a_fio_log_names_itself():
    with pytest.raises(ValueError, match=r"line 2 .*'1000, abc, 1"):
        plots.parse_fio_log('999, 5, 1, 0, 0\n1000, abc, 1, 0, 0\n')
    with pytest.raises(ValueError, match='line 1'):
        plots.parse_fio_log('999, 5\n')


def test_a_series_is_one_direction_scaled():
    samples = plots.parse_fio_log(FIO_LOG)
    xs, ys = plots.fio_series(samples, plots.WRITE, 1e-3)
    assert xs == [0.999, 1.999, 2.999]
    assert ys == pytest.approx([889.243, 853.251, 747.829])
    assert plots.fio_series(samples, plots.READ) == ([1.002], [56.0])


def test_the_remainder_fio_logs_at_the_end_is_left_out():
    # fio's last line: the few milliseconds after the last full window.
    samples = plots.parse_fio_log(
        '1000, 10, 1, 0, 0\n2000, 12, 1, 0, 0\n2004, 90, 1, 0, 0\n')
    assert plots.fio_series(samples, plots.WRITE, window_ms=1000) == (
        [1.0, 2.0], [10, 12])
    assert len(plots.fio_series(samples, plots.WRITE)[0]) == 3


def test_a_missing_log_is_no_samples(tmp_path):
    assert plots.read_fio_log(str(tmp_path / 'none_bw.1.log')) == []


# -- seconds ------------------------------------------------------------------

def test_events_are_counted_per_second_from_start():
    xs, per_s = plots.rate([10.1, 10.2, 10.9, 12.5, 9.9, 13.0], 10.0, 13.0)
    assert xs == [10.5, 11.5, 12.5]
    assert per_s == [3, 0, 1]       # 9.9 and 13.0 lie outside
    # A last second cut short is left out, not drawn as a drop.
    assert plots.rate([10.1, 12.9, 13.2], 10.0, 13.5) == (
        [10.5, 11.5, 12.5], [1, 0, 1])


def test_a_statistic_per_second_is_nan_where_nothing_ended():
    pts = [(0.2, 1.0), (0.7, 3.0), (2.5, 10.0)]
    xs, means = plots.binned(pts, 0.0, 3.0, plots.mean)
    assert xs == [0.5, 1.5, 2.5]
    assert means[0] == 2.0 and math.isnan(means[1]) and means[2] == 10.0
    _, p99 = plots.binned([(0.5, v) for v in range(100)], 0.0, 1.0,
                          plots.quantile(0.99))
    assert p99 == [99]


def test_a_step_function_holds_its_last_value():
    assert plots.step_at([(1.0, 5), (3.0, 7)], [0.5, 1.0, 2.9, 10.0])[1:] \
        == [5, 5, 7]
    assert math.isnan(plots.step_at([(1.0, 5)], [0.5])[0])


# -- where the figure goes ----------------------------------------------------

def test_the_figure_path_is_checked_before_a_run(tmp_path):
    assert plots.check_path(str(tmp_path / 'x.png')) is None
    assert plots.check_path(str(tmp_path / 'X.PNG')) is None
    why = plots.check_path(str(tmp_path / 'no' / 'x.png'))
    assert 'does not exist' in why and str(tmp_path / 'no') in why
    assert 'PNG' in plots.check_path(str(tmp_path / 'x.svg'))
    (tmp_path / 'd.png').mkdir()
    assert 'is a directory' in plots.check_path(str(tmp_path / 'd.png'))


# -- figures ------------------------------------------------------------------

def _wave(n, base, amp=0.2, phase=0.0):
    return [base * (1 + amp * math.sin(i / 2 + phase)) for i in range(n)]


def test_fio_jobs_are_drawn_a_row_each(tmp_path):
    xs = [i + 1.0 for i in range(10)]
    jobs = [(name, unit, [
        ('ursa-nbd', (xs, _wave(10, 300)), (xs, _wave(10, 900, phase=1)),
         {'color': 'C0'}),
        ('nbdkit memory', (xs, _wave(10, 2000)), (xs, _wave(10, 40)),
         {'color': 'C1'})]) for name, unit in (
             ('1M seq write qd8', 'MiB/s'), ('4k rand read qd32', 'IOPS'),
             ('4k rand write qd1', 'IOPS'))]
    path = str(tmp_path / 'fio.png')
    plots.plot_fio_jobs(path, 'three jobs', jobs)
    _, height = assert_png(path)
    one = str(tmp_path / 'one.png')
    plots.plot_fio_jobs(one, 'one job', jobs[:1])
    assert assert_png(one, min_height=100)[1] < height  # a row per job


def test_a_timeline_is_drawn_with_its_events(tmp_path):
    xs = [i + 0.5 for i in range(60)]
    panels = [
        plots.Panel('ops/s', [plots.Line('reads', xs, _wave(60, 500))],
                    bars=[plots.Line('errors', xs, [0] * 20 + [3] * 5 +
                                     [0] * 35, {'color': 'tab:red'})]),
        plots.Panel('latency (ms)', [
            plots.Line('p99', xs, _wave(60, 20, amp=0.8))], log=True)]
    events = [plots.Event(10, 'kill', 18), plots.Event(40, 'faults over')]
    path = str(tmp_path / 'timeline.png')
    plots.plot_timeline(path, 'a timeline', panels, events)
    assert_png(path)


def _fio_log(lines):
    return ''.join('%d, %d, %d, 0, 0\n' % line for line in lines)


def test_bench_nbd_draws_what_fio_logged(tmp_path):
    bench = load_tool('bench-nbd')
    logs = tmp_path / 'logs'
    logs.mkdir()
    timelines = {'ursa': {}, 'nbdkit': {}}
    for key, scale in (('ursa', 1), ('nbdkit', 5)):
        for i, job in enumerate(bench.JOBS):
            prefix = str(logs / ('%s-%d' % (key, i)))
            direction = 0 if 'read' in job.rw else 1
            for name, value in (('bw', 300 * 1024 * scale),
                                ('iops', 5000 * scale),
                                ('clat', 800_000 // scale)):
                with open('%s_%s.1.log' % (prefix, name), 'w') as f:
                    f.write(_fio_log((ms, value + ms, direction)
                                     for ms in range(1000, 5000, 1000)))
            timelines[key][job.name] = [bench.fio_timeline(prefix, job)]
    (tx, tput), (lx, lat) = timelines['ursa']['1M seq write qd8'][0]
    assert tx == [1.0, 2.0, 3.0, 4.0]
    assert tput[0] == pytest.approx((300 * 1024 + 1000) / 1024)  # MiB/s
    assert lat[0] == pytest.approx(801.0)                        # us
    (_, iops), _ = timelines['ursa']['4k rand read qd32'][0]
    assert iops[:2] == [6000, 7000]
    args = types.SimpleNamespace(
        runs=1, chunkservers=3, size='256M', runtime=4,
        data_dir=str(tmp_path), plot=str(tmp_path / 'bench-nbd.png'))
    bench.plot(args, timelines, (30.0, 45.0))
    assert_png(args.plot)


def test_bench_recovery_draws_the_run_from_the_kill(tmp_path):
    bench = load_tool('bench-recovery')
    t_load, t_kill, t_end = 100.0, 110.0, 140.0
    ops = []
    t = t_load
    while t < t_end:
        slow = t_kill < t < t_kill + 4
        ops.append((t, 0.05 if slow else 0.002, int(t * 10) % 2 == 0,
                    'timeout' if slow and int(t * 10) % 7 == 0 else None,
                    0))
        t += 0.01
    repair = [(t_kill + k * 0.2, max(0, min(k - 40, 100)) * 1024 * 1024,
               max(0, 6 - max(0, k - 40) // 16)) for k in range(150)]
    marks = {'marked down': t_kill + 3, 'grace period over': t_kill + 8,
             'first copy': t_kill + 8.2, 'full redundancy': t_kill + 28}
    args = types.SimpleNamespace(
        returning=False, chunkservers=4, size='256M', chunk_size='16M',
        iodepth=16, read_fraction=0.5, replica_grace=5.0,
        server_timeout=15.0, plot=str(tmp_path / 'recovery.png'))
    bench.plot(args, types.SimpleNamespace(ops=ops), repair, marks, t_load,
               t_kill, t_end, 1)
    assert_png(args.plot)


def test_the_chaos_timeline_is_drawn_with_each_fault(tmp_path):
    c = chaos.Chaos.__new__(chaos.Chaos)
    c.args = chaos.parse(['--duration', '60', '--seed', '7'])
    c.seed = 7
    c.io_started, c.io_stopped = 1000.0, 1065.0
    c.fault_times = [('kill', 1005.0, 1012.0), ('lossy-link', 1020.0, 1024.0),
                     ('master-kill', 1035.0, 1041.0)]
    c.marks = [(1060.0, 'faults over')]
    writer = chaos.ModelWriter.__new__(chaos.ModelWriter)
    writer.seconds = chaos.Seconds(c.io_started)
    for k in range(6000):
        start = c.io_started + k * 0.01
        failed = 1006 < start < 1008 and k % 5 == 0
        for kind in ('write', 'read') + (('flush',) if k % 16 == 0 else ()):
            writer.seconds.add(kind, start, start + 0.004, failed)
    fio = types.SimpleNamespace(failed_at=[1030.0], logs=[
        (1000.0 + 15 * run, {
            'iops.1': _fio_log((ms, 300, 1) for ms in range(1000, 15000,
                                                            1000)),
            'iops.2': _fio_log((ms, 32, 1) for ms in range(1000, 9000,
                                                           1000)),
            'clat.1': _fio_log((ms, 2_000_000, 1)
                               for ms in range(1000, 15000, 1000))})
        for run in range(4)])
    c.writers = [writer, fio]
    c.fio = fio
    c.plot(str(tmp_path / 'chaos.png'), {
        'faults_total': 3, 'failures': [], 'time_to_full_redundancy_s': 4.2})
    assert_png(str(tmp_path / 'chaos.png'))
    # Bucketed as recorded: 100 writes a second, a fifth failed in two.
    assert writer.seconds.buckets[(0, 'write')][0] == 100
    assert writer.seconds.buckets[(7, 'write')][3] == 20


def test_chaos_takes_plot_relative_to_where_it_was_asked(tmp_path):
    args = chaos.parse(['--plot', 'run.png'], cwd=str(tmp_path))
    assert args.plot == str(tmp_path / 'run.png')
    assert chaos.parse([]).plot is None


@pytest.mark.parametrize('tool', ['bench-nbd', 'bench-recovery', 'chaos'])
def test_a_plot_in_a_directory_that_does_not_exist_stops_at_once(
        tool, tmp_path):
    """Before anything starts: the message names the directory, the exit
    status is argparse's 2, nothing is printed and no cluster directory
    was made."""
    where = tmp_path / 'nowhere'
    data = tmp_path / 'cluster'
    proc = subprocess.run(
        [sys.executable, os.path.join(TOOLS, tool), '--plot',
         str(where / 'x.png'),
         '--workdir' if tool == 'chaos' else '--data-dir', str(data)],
        capture_output=True, text=True, timeout=60, cwd=str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert 'directory %s does not exist' % where in proc.stderr
    assert proc.stdout == ''
    assert not data.exists()


def test_labels_of_events_close_together_are_joined():
    events = [plots.Event(8.2, 'first copy'), plots.Event(0, 'killed'),
              plots.Event(8.0, 'grace over'), plots.Event(3, 'down')]
    assert plots._labels(events, 0.5) == [
        (0, 'killed'), (3, 'down'), (8.0, 'grace over, first copy')]

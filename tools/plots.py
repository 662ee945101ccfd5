"""Figures for the benchmark and chaos tools: throughput and latency over
time, as PNG files.

The tools import it from their own directory (``sys.path``), and it
imports matplotlib only when a figure is drawn: a run without ``--plot``
needs neither.  Figures are drawn on ``matplotlib.figure.Figure`` with the
Agg canvas, not through pyplot: no display, no global state, safe beside
the threads a tool runs.
"""

import bisect
import collections
import importlib.util
import math
import os
import sys

DPI = 90

FioSample = collections.namedtuple('FioSample', 'ms value direction bs offset')

# fio's data direction column.
READ, WRITE, TRIM = 0, 1, 2

Line = collections.namedtuple('Line', 'label xs ys style', defaults=(None,))
Line.__doc__ = """One curve: ``xs`` seconds, ``ys`` values (NaN for none);
``style``: matplotlib keyword arguments (color, linestyle, ...)."""

Panel = collections.namedtuple('Panel', 'ylabel lines log bars',
                               defaults=(False, ()))
Panel.__doc__ = """One row of a timeline: its ``lines``, and ``bars`` (Lines
drawn as 1-second bars, e.g. errors); ``log``: a log-scale y axis."""

Event = collections.namedtuple('Event', 't label end', defaults=(None,))
Event.__doc__ = """A moment (``t``, seconds) marked by a vertical line
across every panel and ``label`` at the top; with ``end``, the span to it
is shaded (a fault held until its heal)."""


def check_path(path):
    """Why ``path`` cannot take a PNG figure, or None: checked before a
    run, so that minutes of measuring do not end in a failed save."""
    if not path.lower().endswith('.png'):
        return '--plot %s: the figure is a PNG, name it FILE.png' % path
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        return '--plot %s: directory %s does not exist' % (path, parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        return '--plot %s: directory %s is not writable' % (path, parent)
    if os.path.isdir(path):
        return '--plot %s is a directory' % path
    if importlib.util.find_spec('matplotlib') is None:
        return ('--plot needs matplotlib, not installed for %s (pip '
                'install matplotlib)' % sys.executable)
    return None


# -- fio's logs ---------------------------------------------------------------

def parse_fio_log(text):
    """The samples of a fio bw/iops/lat log (``--write_*_log``): lines of
    "time ms, value, direction, block size, offset" (older fio has no
    offset, newer adds a priority, ignored).  With ``--log_avg_msec`` each
    line is the mean of its window: KiB/s, IOPS, or nanoseconds."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(',')]
        try:
            if len(fields) < 4:
                raise ValueError('%d fields' % len(fields))
            ms, value, direction, bs = (int(f) for f in fields[:4])
            offset = int(fields[4]) if len(fields) > 4 else 0
        except ValueError as e:
            raise ValueError('fio log line %d (%r) is not "time, value, '
                             'direction, bs, offset": %s' % (n, line, e))
        out.append(FioSample(ms, value, direction, bs, offset))
    return out


def read_fio_log(path):
    """:func:`parse_fio_log` of a file; [] if fio wrote none."""
    try:
        with open(path) as f:
            return parse_fio_log(f.read())
    except FileNotFoundError:
        return []


def fio_series(samples, direction, scale=1.0, window_ms=None):
    """(seconds, values × ``scale``) of one direction of a fio log, each
    point at the end of its window.  With ``window_ms`` (the
    --log_avg_msec of the log), a sample less than half a window after
    the one before is left out: the remainder fio logs when the job
    ends, an average of a few milliseconds."""
    pts, last = [], 0
    for s in samples:
        if s.direction != direction:
            continue
        if window_ms and s.ms - last < window_ms / 2:
            continue
        pts.append((s.ms / 1e3, s.value * scale))
        last = s.ms
    return [t for t, _ in pts], [v for _, v in pts]


# -- samples per second -------------------------------------------------------

def bins(start, end, width=1.0):
    """Left edges of the whole ``width``-second bins from ``start`` up to
    ``end`` (a last part-filled bin would read as a drop)."""
    n = max(0, int((end - start) / width + 1e-9))
    return [start + i * width for i in range(n)]


def rate(times, start, end, width=1.0):
    """(bin middles, events per second in each bin) of event ``times``
    (seconds, any order) in [start, end)."""
    edges = bins(start, end, width)
    counts = [0] * len(edges)
    for t in times:
        i = int((t - start) // width)
        if 0 <= i < len(counts):
            counts[i] += 1
    return [e + width / 2 for e in edges], [c / width for c in counts]


def binned(points, start, end, stat, width=1.0):
    """(bin middles, ``stat(values)`` of the (time, value) ``points`` in
    each bin, NaN where a bin has none) over [start, end)."""
    edges = bins(start, end, width)
    groups = [[] for _ in edges]
    for t, v in points:
        i = int((t - start) // width)
        if 0 <= i < len(groups):
            groups[i].append(v)
    return ([e + width / 2 for e in edges],
            [stat(g) if g else math.nan for g in groups])


def mean(values):
    return sum(values) / len(values)


def quantile(q):
    """A ``stat`` for :func:`binned`: the ``q`` quantile (nearest rank)."""
    def stat(values):
        values = sorted(values)
        return values[min(int(len(values) * q), len(values) - 1)]
    return stat


def step_at(samples, xs):
    """The value of a step function given by sorted (time, value)
    ``samples`` at each of ``xs`` (NaN before the first sample)."""
    times = [t for t, _ in samples]
    out = []
    for x in xs:
        i = bisect.bisect_right(times, x) - 1
        out.append(samples[i][1] if i >= 0 else math.nan)
    return out


# -- figures ------------------------------------------------------------------

def _figure(width, height):
    from matplotlib.figure import Figure  # only when drawing (see above)
    return Figure(figsize=(width, height), layout='constrained')


def _save(fig, path, dpi):
    fig.savefig(path, dpi=dpi, format='png')


def _log_y(ax):
    """A log-scale y axis labelled 1, 2, 5, 10, 20, ... in plain numbers
    (latencies that differ tenfold between targets or moments)."""
    from matplotlib import ticker
    ax.set_yscale('log')
    ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(
        lambda v, _: '%g' % v))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def _labels(events, near):
    """(time, label) of the events' labels, those of events within
    ``near`` of the first of a group joined into one (no overlapping
    text)."""
    out = []
    for ev in sorted(events, key=lambda e: e.t):
        if out and ev.t - out[-1][0] < near:
            out[-1][1].append(ev.label)
        else:
            out.append((ev.t, [ev.label]))
    return [(t, ', '.join(labels)) for t, labels in out]


def plot_fio_jobs(path, title, jobs, dpi=80):
    """One row per fio job: its throughput over time on the left, its
    mean latency on the right, one line per target (and run).

    ``jobs``: [(job name, throughput unit, [(label, (xs, throughput),
    (xs, latency in us), style)])]."""
    fig = _figure(11, 1.7 * len(jobs) + 1.0)
    axes = fig.subplots(len(jobs), 2, squeeze=False, sharex=True)
    for row, (name, unit, lines) in zip(axes, jobs, strict=True):
        left, right = row
        for label, (tx, ty), (lx, ly), style in lines:
            left.plot(tx, ty, label=label, marker='.', **(style or {}))
            right.plot(lx, ly, label=label, marker='.', **(style or {}))
        left.set_ylabel('%s\n%s' % (name, unit), fontsize=8)
        left.set_ylim(bottom=0)
        lat = [v for _, _, (_, ly), _ in lines for v in ly if v > 0]
        if lat and max(lat) > 20 * min(lat):   # targets a world apart
            _log_y(right)
            right.set_ylabel('mean latency (us, log)', fontsize=8)
        else:
            right.set_ylim(bottom=0)
            right.set_ylabel('mean latency (us)', fontsize=8)
        for ax in row:
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
    axes[0][0].set_title('throughput, per second', fontsize=9)
    axes[0][1].set_title('completion latency, mean of each second',
                         fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel('seconds into the job (after its 1 s ramp)',
                      fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc='outside lower center',
                   ncols=min(len(labels), 4), fontsize=8)
    fig.suptitle(title, fontsize=9)
    _save(fig, path, dpi)


def plot_timeline(path, title, panels, events=(), xlabel='seconds',
                  dpi=DPI, width=11):
    """Panels stacked on one time axis (seconds), each :class:`Event` a
    vertical line across them, labelled at the top, and its span shaded
    when it has an ``end``."""
    heights = [2.2] * len(panels)
    fig = _figure(width, sum(heights) + 1.2)
    axes = fig.subplots(len(panels), 1, squeeze=False, sharex=True)[:, 0]
    for ax, panel in zip(axes, panels, strict=True):
        for line in panel.lines:
            ax.plot(line.xs, line.ys, label=line.label, **(line.style or {}))
        for bar in panel.bars:
            ax.bar(bar.xs, bar.ys, width=1.0, label=bar.label, alpha=0.7,
                   **(bar.style or {}))
        if panel.log:
            _log_y(ax)
        else:
            ax.set_ylim(bottom=0)
        ax.set_ylabel(panel.ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        if panel.lines or panel.bars:
            ax.legend(fontsize=7, loc='best', framealpha=0.8)
        for ev in events:
            ax.axvline(ev.t, color='0.35', linestyle='--', linewidth=0.8)
            if ev.end is not None:
                ax.axvspan(ev.t, ev.end, color='tab:red', alpha=0.08)
    top = axes[0]
    lo, hi = top.get_xlim()
    for t, label in _labels(events, 0.012 * (hi - lo)):
        top.text(t, 1.0, ' ' + label, rotation=90, fontsize=7,
                 va='bottom', ha='center', color='0.2',
                 transform=top.get_xaxis_transform(), clip_on=False)
    axes[-1].set_xlabel(xlabel, fontsize=8)
    fig.suptitle(title, fontsize=9)
    _save(fig, path, dpi)

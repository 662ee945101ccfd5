"""The Grafana dashboard shipped in etc/grafana/ursa-cluster.json: a
dashboard Grafana imports on any server (its Prometheus data source is
an import input, ``DS_PROMETHEUS``, behind a ``datasource`` variable),
whose panels each have a title, a description, a unit and queries on
that data source; whose queries are valid PromQL (promtool parses them)
and name only metric families that Ursa's and nova_ha's processes
export, as their registries, built here the way the services build
them, declare: a family renamed in the code fails here.  Counters and
histograms are read through a rate over ``$__rate_interval`` (or, in a
stat, an increase over ``$__range``), gauges as they are.

That each query returns data from a real cluster is proven by
tests/functional/test_prometheus.py."""

import json
import os
import re
import subprocess

import prometheus_client as prom
import pytest
import yaml

from tests.fixtures import prometheus

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
DASHBOARD = os.path.join(ROOT, 'etc', 'grafana', 'ursa-cluster.json')

DATASOURCE = {'type': 'prometheus', 'uid': '${datasource}'}
# The Grafana unit ids the panels use.
UNITS = {'ops', 'Bps', 's', 'bytes', 'percentunit', 'short'}
# The sections operators are promised, in this order.
ROWS = ['Cluster overview', 'Chunk servers', 'Gateways', 'Volumes',
        'Recovery', 'Masters', 'nova_ha']
# Range selectors allowed: the rate window Grafana derives from the
# scrape interval, and the dashboard's time range (stat panels only).
RATE_RANGE = '$__rate_interval'
STAT_RANGE = '$__range'
BUILTINS = {'__rate_interval', '__range', '__interval'}

METRIC = re.compile(r'\b((?:ursa|nova_ha)_[a-z0-9_]+)\b(\{[^}]*\})?'
                    r'(\[[^\]]*\])?')
VARIABLE = re.compile(r'\$\{?(\w+)')


def load():
    with open(DASHBOARD) as f:
        return json.load(f)


def panels(dash=None):
    """The dashboard's panels (rows excluded), nested rows' included."""
    dash = dash or load()
    out = []
    for p in dash['panels']:
        if p['type'] == 'row':
            out.extend(p.get('panels', []))
        else:
            out.append(p)
    return out


def queries(dash=None):
    """[(panel, target)] of every query of every panel."""
    return [(p, t) for p in panels(dash) for t in p['targets']]


def variable_queries(dash=None):
    """{name: PromQL selector} of the query variables (label_values(X,
    label): X)."""
    dash = dash or load()
    out = {}
    for v in dash['templating']['list']:
        if v['type'] == 'query':
            q = v['query']['query'] if isinstance(v['query'], dict) \
                else v['query']
            m = re.fullmatch(r'label_values\((.*),\s*(\w+)\)', q)
            assert m, (v['name'], q)
            out[v['name']] = (m.group(1), m.group(2))
    return out


def substitute(expr, rate='1m', range_='1h', interval='15s', value='.*'):
    """``expr`` with Grafana's variables replaced: the ranges by the
    durations given, the dashboard's own variables by ``value``."""
    fixed = {'__rate_interval': rate, '__range': range_,
             '__interval': interval}
    return re.sub(r'\$\{(\w+)\}|\$(\w+)',
                  lambda m: fixed.get(m.group(1) or m.group(2), value), expr)


# --- the families Ursa's and nova_ha's processes export ----------------------

def _families(registry):
    """{family name: type} the registry declares (its # TYPE lines)."""
    text = prom.generate_latest(registry).decode()
    return dict(re.findall(r'^# TYPE (\S+) (\S+)$', text, re.M))


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """{sample name: type of its family} of every family a chunk server,
    a master, a gateway, an attach agent and a nova_ha evacuator
    declare, their registries built as the services build them (nothing
    listens)."""
    from cinder_ursa.attach import agent as attach_agent
    from cinder_ursa.attach import metrics as attach_metrics
    from cinder_ursa.chunkserver import server as cs_server
    from cinder_ursa.master import api
    from cinder_ursa.master import store as store_mod
    from cinder_ursa.nbd import server as nbd_server
    from cinder_ursa.transport import metrics
    from nova_ha import metrics as nova_ha_metrics

    tmp = tmp_path_factory.mktemp('registries')
    key = b'k' * 32
    registries = []
    cs = cs_server.ChunkServer(str(tmp / 'cs'), key, ['http://127.0.0.1:1'])
    registries.append(cs.metrics.registry)
    store = store_mod.MetadataStore('sqlite:///%s' % (tmp / 'm.sqlite'),
                                    failure_domain='host')
    store.upgrade()
    pm = metrics.ProcessMetrics('master')
    api.MasterAPI(store, key, metrics=pm)
    registries.append(pm.registry)
    pm = metrics.ProcessMetrics('nbd')
    nbd_server.NbdServer(None).register_metrics(pm)
    registries.append(pm.registry)
    pm = metrics.ProcessMetrics('attach')
    am = attach_metrics.AttachMetrics(pm)
    am.watch(attach_agent.AttachFS(metrics=am))
    registries.append(pm.registry)
    registries.append(nova_ha_metrics.Metrics().registry)

    samples = {}
    for registry in registries:
        for name, kind in _families(registry).items():
            if kind == 'histogram':
                for suffix in ('_bucket', '_sum', '_count'):
                    samples[name + suffix] = 'histogram'
            else:
                samples[name] = kind
    store.close()
    return samples


# --- the tests ---------------------------------------------------------------

def test_the_dashboard_imports_on_any_grafana():
    dash = load()
    assert 36 <= dash['schemaVersion'] <= 41
    assert dash['uid'] == 'ursa-cluster' and dash['title']
    assert dash['id'] is None
    inputs = {i['name']: i for i in dash['__inputs']}
    assert inputs['DS_PROMETHEUS']['type'] == 'datasource'
    assert inputs['DS_PROMETHEUS']['pluginId'] == 'prometheus'
    variables = {v['name']: v for v in dash['templating']['list']}
    ds = variables['datasource']
    assert ds['type'] == 'datasource' and ds['query'] == 'prometheus'
    assert ds['current']['value'] == '${DS_PROMETHEUS}'
    # The input is used by the datasource variable alone: everything else
    # goes through the variable.
    text = json.dumps(dash)
    assert text.count('${DS_PROMETHEUS}') == 1
    for name in ('master', 'chunkserver', 'gateway', 'volume'):
        v = variables[name]
        assert v['datasource'] == DATASOURCE, name
        assert v['multi'] and v['includeAll'] and v['allValue'] == '.*'


def test_the_rows_are_the_promised_sections():
    dash = load()
    assert [p['title'] for p in dash['panels'] if p['type'] == 'row'] == ROWS


def test_every_panel_has_a_title_unit_description_and_queries():
    dash = load()
    everything = dash['panels'] + [c for p in dash['panels']
                                   for c in p.get('panels', [])]
    ids = [p['id'] for p in everything]
    assert len(ids) == len(set(ids)), 'panel ids not unique'
    titles = [p['title'] for p in panels(dash)]
    assert len(titles) == len(set(titles)), 'panel titles not unique'
    for p in panels(dash):
        title = p.get('title')
        assert title, p['id']
        assert p['type'] in ('timeseries', 'stat'), title
        assert p['datasource'] == DATASOURCE, title
        assert len(p.get('description', '')) > 20, title
        assert p['fieldConfig']['defaults'].get('unit') in UNITS, title
        assert p['targets'], title
        refs = [t['refId'] for t in p['targets']]
        assert len(refs) == len(set(refs)), title
        for t in p['targets']:
            assert t['expr'].strip(), title
            assert t['datasource'] == DATASOURCE, title
            assert t.get('legendFormat'), title


def test_panels_do_not_overlap():
    cells = {}
    for p in load()['panels']:
        g = p['gridPos']
        assert g['x'] + g['w'] <= 24, p['title']
        for x in range(g['x'], g['x'] + g['w']):
            for y in range(g['y'], g['y'] + g['h']):
                assert (x, y) not in cells, (p['title'], cells[(x, y)])
                cells[(x, y)] = p['title']


def test_every_metric_is_one_the_processes_export(exported):
    assert 'ursa_chunkserver_operations_total' in exported   # a sanity check
    used = {}
    for p, t in queries():
        for name, _, _ in METRIC.findall(t['expr']):
            used.setdefault(name, p['title'])
    for name, (selector, _) in variable_queries().items():
        for metric, _, _ in METRIC.findall(selector):
            used.setdefault(metric, 'variable ' + name)
    unknown = {n: where for n, where in used.items() if n not in exported}
    assert not unknown, 'not exported by any process: %s' % unknown


def test_counters_are_rated_and_gauges_are_not(exported):
    """A counter's or a histogram's series is read over a range (its
    rate, or its increase in a stat), always ``$__rate_interval`` in a
    graph and ``$__range`` in a stat; a gauge is read as it is; no other
    range appears."""
    for p, t in queries():
        expr = t['expr']
        for name, _, window in METRIC.findall(expr):
            kind = exported.get(name)
            if kind in ('counter', 'histogram'):
                want = STAT_RANGE if p['type'] == 'stat' else RATE_RANGE
                assert window == '[%s]' % want, (p['title'], name, window)
            elif kind == 'gauge':
                assert not window, (p['title'], name, window)
        ranges = re.findall(r'\[([^\]]*)\]', expr)
        assert set(ranges) <= {RATE_RANGE, STAT_RANGE}, (p['title'], expr)
        if '_bucket' in expr:
            assert 'histogram_quantile(' in expr and ' le)' in expr, (
                p['title'], expr)


def test_every_variable_used_is_defined():
    dash = load()
    defined = {v['name'] for v in dash['templating']['list']} | BUILTINS
    used = {m for _, t in queries(dash) for m in VARIABLE.findall(t['expr'])}
    for selector, _ in variable_queries(dash).values():
        used |= set(VARIABLE.findall(selector))
    assert used <= defined, used - defined


def test_promtool_parses_every_query(tmp_path):
    """Each query, its variables replaced, as a recording rule that
    ``promtool check rules`` parses."""
    rules = [{'record': 'dashboard:q%d' % i, 'expr': substitute(t['expr'])}
             for i, (_, t) in enumerate(queries())]
    rules += [{'record': 'dashboard:v%d' % i, 'expr': substitute(sel)}
              for i, (sel, _) in enumerate(variable_queries().values())]
    path = tmp_path / 'dashboard-rules.yml'
    path.write_text(yaml.safe_dump(
        {'groups': [{'name': 'dashboard', 'rules': rules}]}))
    r = subprocess.run([prometheus.binary('promtool'), 'check', 'rules',
                        str(path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr

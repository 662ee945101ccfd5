"""Prometheus metrics of the evacuator, served by Ursa's metrics server
(:class:`cinder_ursa.transport.metrics.MetricsServer`)."""

import prometheus_client as prom

from cinder_ursa.transport.metrics import MetricsServer

__all__ = ['Metrics', 'MetricsServer', 'HOST_STATES']

HOST_STATES = ('ok', 'degraded', 'suspect', 'failed', 'returned',
               'maintenance')


class Metrics:
    def __init__(self, registry=None):
        self.registry = registry or prom.CollectorRegistry()
        r = self.registry
        self.leader = prom.Gauge('nova_ha_leader',
                                 '1 while this evacuator is the acting one',
                                 registry=r)
        self.coordination_up = prom.Gauge(
            'nova_ha_coordination_up',
            '1 while the tooz backend answers', registry=r)
        self.storage_up = prom.Gauge(
            'nova_ha_storage_up', '1 while the Ursa master answers for the '
            'hosts\' storage heartbeats', registry=r)
        self.paused = prom.Gauge(
            'nova_ha_paused', '1 while recoveries are paused (mass-failure '
            'guard or operator)', registry=r)
        self.hosts = prom.Gauge('nova_ha_hosts',
                                'Compute hosts by state', ['state'],
                                registry=r)
        self.guard_trips = prom.Counter(
            'nova_ha_guard_trips', 'Times the mass-failure guard paused '
            'recoveries', registry=r)
        self.fences = prom.Counter('nova_ha_fences',
                                   'Fence attempts', ['method', 'result'],
                                   registry=r)
        self.recoveries = prom.Counter('nova_ha_recoveries',
                                       'Finished host recoveries',
                                       ['result'], registry=r)
        self.evacuations = prom.Counter(
            'nova_ha_instances', 'Instances of failed hosts by outcome',
            ['result'], registry=r)
        self.recovery_seconds = prom.Histogram(
            'nova_ha_recovery_seconds',
            'From the first sign of failure to the last instance evacuated',
            buckets=(10, 30, 60, 120, 300, 600, 1200, 3600), registry=r)

    def set_hosts(self, counts):
        for state in HOST_STATES:
            self.hosts.labels(state).set(counts.get(state, 0))

    def serve(self, port, addr='127.0.0.1', timeout=5.0,
              max_connections=64):
        """Serve ``/metrics`` on ``addr``:``port`` in a thread; return
        the started MetricsServer (``shutdown()`` stops it)."""
        server = MetricsServer(self.registry, addr, port, timeout,
                               max_connections)
        server.start()
        return server

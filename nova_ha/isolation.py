"""A compute host's isolation response: what its agent does once it can
reach neither the coordination backend nor the Ursa master (or learns
from the master that nova_ha fenced it).

The evacuator declares such a host failed once both of its heartbeats
have been silent for the grace period, fences it and restarts its HA
instances elsewhere.  The host cannot be told, so it decides for itself,
a little earlier: it stops its HA instances (``isolation_response =
stop``), so that when its link comes back nothing runs twice, or leaves
them running (``leave_running``: their writes are refused from the fence
on anyway).

Which instances are HA the agent learns from Nova while it can (every
``instances_refresh`` seconds, with the evacuator's ``policy`` and
``ha_key``), and keeps on disk: an isolated host cannot ask.  Each is
stopped with ``stop_instance_command``.
"""

import json
import logging
import os
import shlex
import shutil
import socket
import struct
import subprocess
import time

from nova_ha import nova as nova_mod

LOG = logging.getLogger(__name__)

COMMAND_TIMEOUT = 30


def nova_configured(conf):
    """Whether [nova] says how to reach the compute API."""
    return bool(conf.nova.auth_type)


class Responder:
    def __init__(self, conf, nova=None):
        self.conf = conf
        self.a = conf.agent
        self.host = conf.agent.host
        self.nova = nova
        if self.nova is None and nova_configured(conf):
            self.nova = nova_mod.NovaClient.from_conf(conf)
        self.path = os.path.join(conf.state_path,
                                 'ha-instances-%s.json' % self.host)
        # (Read now: a bad value stops the agent at its start.)
        self.every = conf.agent.instances_refresh
        self._refreshed = 0.0
        self._failing = None
        self.instances = self._load()

    def _load(self):
        try:
            with open(self.path) as f:
                data = json.load(f)
            if data.get('host') == self.host:
                return data['instances']
        except (OSError, ValueError, KeyError, AttributeError):
            pass
        return None

    def refresh(self, force=False):
        """Learn this host's HA instances from Nova, at most every
        instances_refresh seconds.  Returns whether it asked."""
        if self.nova is None:
            return False
        now = time.monotonic()
        if not force and now - self._refreshed < self.every:
            return False
        self._refreshed = now
        try:
            servers = self.nova.servers_on_host(self.host)
        except nova_mod.NovaError as e:
            if str(e) != self._failing:
                LOG.warning('Listing the instances of %s: %s (the isolation '
                            'response uses the list of %s)', self.host, e,
                            'before' if self.instances is not None else
                            'nothing: none is known yet')
            self._failing = str(e)
            return True
        self._failing = None
        ev = self.conf.evacuator
        ha = [{'uuid': s['id'], 'name': s.get('name')} for s in servers
              if nova_mod.selected(nova_mod.server_props(s), ev.policy,
                                   ev.ha_key)]
        if ha != self.instances:
            LOG.info('Host %s runs %d HA instance(s)%s', self.host, len(ha),
                     ': ' + ', '.join(i['name'] or i['uuid'] for i in ha)
                     if ha else '')
        self.instances = ha
        tmp = self.path + '.tmp'
        try:
            with open(tmp, 'w') as f:
                json.dump({'host': self.host, 'instances': ha}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            LOG.warning('Keeping the HA instance list in %s: %s', self.path,
                        e)
        return True

    def respond(self, why):
        """Apply the isolation response; returns what it did."""
        if self.a.isolation_response == 'leave_running':
            LOG.critical('Host %s: %s. isolation_response = leave_running: '
                         'its HA instances are left running (their writes '
                         'are refused once it is fenced)', self.host, why)
            return 'left running'
        if self.instances is None:
            LOG.critical('Host %s: %s, but which of its instances are HA '
                         'is unknown (no answer from Nova yet, or no [nova] '
                         'section): none is stopped', self.host, why)
            return 'nothing known to stop'
        LOG.critical('Host %s: %s. Stopping its %d HA instance(s): they '
                     'are restarted elsewhere', self.host, why,
                     len(self.instances))
        stopped = 0
        for inst in self.instances:
            if self._stop(inst):
                stopped += 1
        return 'stopped %d of %d HA instance(s)' % (stopped,
                                                     len(self.instances))

    def _stop(self, inst):
        argv = [a.replace('{uuid}', inst['uuid']).replace(
                    '{name}', inst['name'] or '')
                for a in shlex.split(self.a.stop_instance_command)]
        try:
            r = subprocess.run(argv, capture_output=True, text=True,
                               timeout=COMMAND_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            LOG.error('Stopping instance %s (%s): %s failed: %s',
                      inst['name'], inst['uuid'], argv, e)
            return False
        if r.returncode != 0:
            LOG.error('Stopping instance %s (%s): %s exited %d: %s',
                      inst['name'], inst['uuid'], argv, r.returncode,
                      (r.stderr or r.stdout).strip()[-500:])
            return False
        LOG.warning('Instance %s (%s) stopped', inst['name'], inst['uuid'])
        return True


def default_gateway(route_file='/proc/net/route'):
    """The address of this host's default gateway (IPv4), or None."""
    try:
        with open(route_file) as f:
            next(f)
            for line in f:
                fields = line.split()
                if len(fields) > 3 and fields[1] == '00000000' and \
                        int(fields[3], 16) & 2:      # RTF_GATEWAY
                    return socket.inet_ntoa(struct.pack(
                        '<I', int(fields[2], 16)))
    except (OSError, ValueError, StopIteration):
        pass
    return None


def check_connected(command):
    """Whether this host still reaches its network although both
    heartbeats are lost (the controllers are down, not its link): its
    ``isolation_check_command`` exits 0, or, when that is empty, its
    default gateway answers a ping.  No gateway, no ping: not
    connected."""
    if not command:
        gateway = default_gateway()
        if gateway is None or shutil.which('ping') is None:
            return False
        command = 'ping -c 1 -W 1 %s' % gateway
    try:
        return subprocess.run(shlex.split(command), capture_output=True,
                              timeout=COMMAND_TIMEOUT,
                              check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False

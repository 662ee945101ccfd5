"""Fencing: make sure a failed host can never write again before its
instances run elsewhere."""

import logging
import shlex
import subprocess

from cinder_ursa import exception as ursa_exc
from cinder_ursa.client import master as ursa_master

LOG = logging.getLogger(__name__)


class FenceError(Exception):
    pass


class UrsaFence:
    """Storage fencing: the Ursa master revokes every lease the host holds
    (chunk servers refuse its writes from that moment) and refuses it new
    ones until it is unfenced."""

    name = 'ursa'

    def __init__(self, master):
        self.master = master

    @classmethod
    def from_conf(cls, conf):
        return cls(ursa_master.MasterClient.from_conf(conf))

    def fence(self, host, reason):
        try:
            result = self.master.fence_host(host, reason)
        except ursa_exc.UrsaError as e:
            raise FenceError('Ursa could not fence %s: %s' % (host, e)) \
                from None
        return '%d Ursa lease(s) revoked' % len(result['fenced'])

    def unfence(self, host):
        try:
            self.master.unfence_host(host)
        except ursa_exc.NotFound:
            pass

    def live_leases(self, host):
        """How many unexpired leases the host holds (the second opinion:
        a host that still renews its leases is alive)."""
        return self.master.host(host)['live_leases']


class CommandFence:
    """A fence command (an IPMI power-off, a switch port shutdown...):
    exit status 0 means the host is fenced."""

    name = 'command'

    def __init__(self, command, timeout):
        self.command = command
        self.timeout = timeout

    def fence(self, host, reason):
        argv = [a.replace('{host}', host) for a in shlex.split(self.command)]
        try:
            r = subprocess.run(argv, capture_output=True, text=True,
                               timeout=self.timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise FenceError('fence command %s failed: %s' % (argv, e)) \
                from None
        if r.returncode != 0:
            raise FenceError('fence command %s exited %d: %s' % (
                argv, r.returncode, (r.stderr or r.stdout).strip()[-500:]))
        return 'fence command exited 0'

    def unfence(self, host):
        pass


def ursa_configured(conf):
    """Whether [ursa] says how to reach the master: its URL and a key."""
    return bool(conf.ursa.master_url and (
        conf.ursa.cluster_key_file or conf.ursa.cluster_key
        or conf.ursa.principal_key_file))


def fences_from_conf(conf):
    fences = []
    if conf.evacuator.use_ursa_fencing and ursa_configured(conf):
        fences.append(UrsaFence.from_conf(conf))
    if conf.evacuator.fence_command:
        fences.append(CommandFence(conf.evacuator.fence_command,
                                   conf.evacuator.fence_timeout))
    return fences

"""``ursa key create|list|rotate|revoke``: the principals that sign REST
requests, each with a role limiting what it may ask the masters.

A key is made here and written to a file (mode 0600) on this machine;
it goes to the master wrapped with the key of the admin running the
command (``auth.wrap_key``), never in clear.  Copy the file to the
host of the daemon that signs with it and point that daemon's ``[ursa]
principal`` and ``principal_key_file`` at it.
"""

import os

from cliff import command
from cliff import lister
from cliff import show

from cinder_ursa import exception
from cinder_ursa.common import auth
from cinder_ursa.common import units
from cinder_ursa.protocol import roles

_when = units.format_time

# Seconds a rotated key stays valid by default: time to copy the new
# file to the daemon and restart it.
ROTATE_WINDOW = 3600


def _key_file(args):
    return os.path.abspath(args.key_file or '%s.key' % args.name)


def _info(p, key_file=None):
    info = {'name': p['name'], 'role': p['role'],
            'created_at': _when(p['created_at']),
            'rotated_at': _when(p['rotated_at']),
            'previous_key_valid_until': _when(p['previous_key_until'])}
    if key_file:
        info['key_file'] = key_file
    return tuple(info), tuple(info.values())


class KeyCreate(show.ShowOne):
    """Create a principal with a role and a new key, and write the key to
    a file (mode 0600; refused if it exists).  Roles: admin (every
    route), chunkserver (the ursa-chunkserver processes of one storage
    host), volume (the Cinder driver), host (ursa-nbd and ursa-attach of
    one hypervisor), nova_ha (fencing and status); name a chunkserver or
    host principal after its host.
    Example: ursa key create compute-3 --role host --key-file
    /etc/ursa/compute-3.key"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('name', help='Principal name: 1 to %d letters, '
                       'digits, ".", "-" or "_"; a host principal is its '
                       'host\'s name.' % auth.PRINCIPAL_MAX)
        p.add_argument('--role', required=True,
                       choices=sorted(r for r in roles.ROLES),
                       help='What the principal may ask the masters.')
        p.add_argument('--key-file', help='Where to write the key '
                       '(default: NAME.key in the current directory).')
        return p

    def take_action(self, args):
        path = _key_file(args)
        if os.path.exists(path):
            raise exception.InvalidArgument(
                reason='%s exists: give another --key-file' % path)
        key = auth.new_key()
        p = self.app.master().create_principal(args.name, args.role, key)
        # Written once the master took it: a refused create leaves no
        # file behind.
        auth.write_key_file(path, key)
        self.app.stdout.write(
            'Key of principal %s written to %s: copy it to the host that '
            'signs as %s and set [ursa] principal = %s and '
            'principal_key_file there\n' % (args.name, path, args.name,
                                            args.name))
        return _info(p, path)


class KeyList(lister.Lister):
    """List the principals with their roles and rotations (no keys; the
    cluster key, principal admin, is not listed).  Example: ursa key
    list"""

    def take_action(self, args):
        return (('name', 'role', 'created_at', 'rotated_at',
                 'previous_key_valid_until'),
                [(p['name'], p['role'], _when(p['created_at']),
                  _when(p['rotated_at']), _when(p['previous_key_until']))
                 for p in self.app.master().principals()])


class KeyRotate(show.ShowOne):
    """Give a principal a new key, written to its key file (replaced),
    while the old key stays valid for --window seconds: copy the new file
    to the daemon's host and restart the daemon meanwhile, no request is
    refused.  Example: ursa key rotate compute-3 --key-file
    /etc/ursa/compute-3.key"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('name', help='Principal name.')
        p.add_argument('--key-file', help='Where to write the new key '
                       '(replaced if it exists; default: NAME.key in the '
                       'current directory).')
        p.add_argument('--window', type=float, default=ROTATE_WINDOW,
                       help='Seconds the old key stays valid (default '
                       '%(default)s; 0: refused at once, as after a '
                       'leak).')
        return p

    def take_action(self, args):
        path = _key_file(args)
        key = auth.new_key()
        # Written beside the key file first, then the master told, then
        # renamed over the file: a refused rotation leaves the old file
        # (still valid) in place, and an accepted one never leaves a key
        # that is nowhere on disk.
        tmp = path + '.new'
        if os.path.exists(tmp):
            os.unlink(tmp)
        auth.write_key_file(tmp, key)
        try:
            p = self.app.master().rotate_principal(args.name, key,
                                                   args.window)
        except BaseException:
            os.unlink(tmp)
            raise
        os.replace(tmp, path)
        self.app.stdout.write(
            'New key of principal %s written to %s; the old one is valid '
            'until %s: install the new file and restart what signs as %s '
            'before then\n' % (args.name, path,
                               _when(p['previous_key_until']) or 'now',
                               args.name))
        return _info(p, path)


class KeyRevoke(command.Command):
    """Revoke a principal: its keys (the previous one too) are refused
    at once.  Example: ursa key revoke compute-3"""

    def get_parser(self, prog_name):
        p = super().get_parser(prog_name)
        p.add_argument('name', help='Principal name.')
        return p

    def take_action(self, args):
        self.app.master().revoke_principal(args.name)
        self.app.stdout.write('Principal %s revoked\n' % args.name)

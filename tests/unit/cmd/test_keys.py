"""``ursa key create|list|rotate|revoke`` in process, against a fake
master: key files are written 0600 and only once the master took the
key, a rotation replaces the file only when the master accepted it, and
nothing shown holds a key."""

import argparse
import configparser
import io
import os
import pathlib

import pytest

from cinder_ursa import exception
from cinder_ursa.cmd import cli
from cinder_ursa.cmd.admin import keys
from cinder_ursa.common import auth
from cinder_ursa.transport import http


class FakeMaster:
    def __init__(self):
        self.keys = {}
        self.refuse = None

    def _check(self):
        if self.refuse:
            raise self.refuse

    @staticmethod
    def _shown(name, role='host', until=None):
        return {'name': name, 'role': role, 'created_at': 1.0,
                'rotated_at': None, 'previous_key_until': until}

    def create_principal(self, name, role, key):
        self._check()
        self.keys[name] = key
        return self._shown(name, role)

    def rotate_principal(self, name, key, window):
        self._check()
        self.keys[name] = key
        return self._shown(name, until=1e9 + window)

    def revoke_principal(self, name):
        self._check()
        del self.keys[name]

    def principals(self):
        return [self._shown(n) for n in sorted(self.keys)]


class App:
    def __init__(self):
        self.stdout = io.StringIO()
        self.fake = FakeMaster()

    def master(self):
        return self.fake


def run(cls, argv, app):
    cmd = cls(app, None)
    args = cmd.get_parser('ursa key').parse_args(argv)
    return cmd.take_action(args)


def test_create_writes_a_private_key_file_once(tmp_path):
    app = App()
    path = str(tmp_path / 'compute-1.key')
    names, values = run(keys.KeyCreate, ['compute-1', '--role', 'host',
                                         '--key-file', path], app)
    assert os.stat(path).st_mode & 0o777 == 0o600
    with open(path, 'rb') as f:
        assert f.read().strip() == app.fake.keys['compute-1']
    shown = dict(zip(names, values, strict=True))
    assert shown['key_file'] == path and shown['role'] == 'host'
    assert app.fake.keys['compute-1'].decode() not in str(values)
    assert path in app.stdout.getvalue()
    assert 'principal = compute-1' in app.stdout.getvalue()
    # Never over an existing file (it may be another principal's key).
    with pytest.raises(exception.InvalidArgument, match='exists'):
        run(keys.KeyCreate, ['other', '--role', 'host', '--key-file', path],
            app)
    assert 'other' not in app.fake.keys


def test_create_refused_by_the_master_leaves_no_file(tmp_path):
    app = App()
    app.fake.refuse = exception.AlreadyExists(kind='principal', name='x')
    path = str(tmp_path / 'x.key')
    with pytest.raises(exception.AlreadyExists):
        run(keys.KeyCreate, ['x', '--role', 'volume', '--key-file', path],
            app)
    assert not os.path.exists(path)


def test_rotate_replaces_the_file_only_when_the_master_took_the_key(
        tmp_path):
    app = App()
    path = str(tmp_path / 'ha.key')
    run(keys.KeyCreate, ['ha', '--role', 'nova_ha', '--key-file', path], app)
    old = app.fake.keys['ha']
    app.fake.refuse = exception.Unavailable(reason='no leader')
    with pytest.raises(exception.Unavailable):
        run(keys.KeyRotate, ['ha', '--key-file', path], app)
    with open(path, 'rb') as f:
        assert f.read().strip() == old
    assert sorted(os.listdir(tmp_path)) == ['ha.key']
    app.fake.refuse = None
    run(keys.KeyRotate, ['ha', '--key-file', path, '--window', '60'], app)
    new = app.fake.keys['ha']
    assert new != old
    with open(path, 'rb') as f:
        assert f.read().strip() == new
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert 'the old one is valid until' in app.stdout.getvalue()


def test_list_and_revoke(tmp_path):
    app = App()
    run(keys.KeyCreate, ['ha', '--role', 'nova_ha', '--key-file',
                         str(tmp_path / 'ha.key')], app)
    columns, rows = run(keys.KeyList, [], app)
    assert 'key' not in columns and [r[0] for r in rows] == ['ha']
    run(keys.KeyRevoke, ['ha'], app)
    assert app.fake.keys == {}
    assert 'Principal ha revoked' in app.stdout.getvalue()


def test_roles_are_choices():
    with pytest.raises(SystemExit):
        keys.KeyCreate(App(), None).get_parser('ursa key create').parse_args(
            ['x', '--role', 'root'])


@pytest.mark.parametrize('name,cls', [
    ('ursa key create', keys.KeyCreate), ('ursa key list', keys.KeyList),
    ('ursa key rotate', keys.KeyRotate), ('ursa key revoke', keys.KeyRevoke)])
def test_help_has_an_example_and_every_argument_described(name, cls):
    """tests/unit/test_cli_help.py's rule, for commands the test venv may
    not have installed as entry points yet."""
    parser = cls(None, None).get_parser(name)
    text = ' '.join(parser.format_help().split())
    assert 'Example: %s' % name in text, text
    assert [a.dest for a in parser._actions if not a.help and not
            isinstance(a, argparse._HelpAction)] == []


def test_the_commands_are_entry_points():
    setup = configparser.ConfigParser()
    setup.read(pathlib.Path(keys.__file__).parents[3] / 'setup.cfg')
    eps = setup['entry_points']['ursa.cli']
    for cmd in ('create', 'list', 'rotate', 'revoke'):
        assert 'key_%s = cinder_ursa.cmd.admin.keys:Key%s' % (
            cmd, cmd.capitalize()) in eps


def _ursa_settings(monkeypatch, tmp_path, conf_text, system=False):
    conf = tmp_path / 'ursa.conf'
    conf.write_text(conf_text)
    monkeypatch.setattr(cli, 'SYSTEM_CONF', str(conf))
    monkeypatch.setattr(http, '_default_principal', None)
    app = cli.UrsaApp()
    app.options = argparse.Namespace(
        master=None, key_file=None, config_file=None if system else
        str(conf))
    return app._settings()


def test_the_cli_signs_with_a_principal_key_alone(monkeypatch, tmp_path):
    """A host given only a principal's key (no cluster key) runs the
    commands its role allows."""
    key = auth.new_key()
    auth.write_key_file(str(tmp_path / 'ha.key'), key)
    urls, got = _ursa_settings(
        monkeypatch, tmp_path, '[ursa]\nmaster_url = http://m:1\n'
        'principal = ha\nprincipal_key_file = %s\n' % (tmp_path / 'ha.key'))
    assert (urls, got) == (['http://m:1'], key)
    assert http.default_principal() == ('ha', key)


def test_the_cli_without_any_key_says_so(monkeypatch, tmp_path):
    """The system configuration without a key: a clear error, not an
    endless recursion into it."""
    with pytest.raises(exception.InvalidArgument, match='no cluster key'):
        _ursa_settings(monkeypatch, tmp_path, '[ursa]\n', system=True)

"""Every command explains itself: ``--help`` says what it does, shows an
example of its use, and describes every argument (a man page in short)."""

import argparse
import os
import subprocess
import sys
from importlib import metadata

import pytest

BIN = os.path.dirname(sys.executable)
GROUPS = {'ursa.cli': 'ursa', 'nova_ha.cli': 'nova-ha'}


def _commands():
    for group, prog in GROUPS.items():
        for ep in sorted(metadata.entry_points(group=group),
                         key=lambda e: e.name):
            yield pytest.param(ep, '%s %s' % (prog, ep.name.replace('_', ' ')),
                               id='%s %s' % (prog, ep.name))


def _daemons():
    scripts = [ep.name for ep in metadata.entry_points(
        group='console_scripts') if ep.value.startswith(
            ('cinder_ursa.', 'nova_ha.'))]
    return sorted(set(scripts) - set(GROUPS.values()))


def test_every_console_script_is_covered():
    assert set(_daemons()) >= {'ursa-master', 'ursa-chunkserver', 'ursa-aio',
                               'ursa-nbd', 'ursa-attach', 'nova-ha-agent',
                               'nova-ha-evacuator'}


@pytest.mark.parametrize('ep,name', list(_commands()))
def test_subcommand_help_has_an_example_and_every_argument_described(
        ep, name):
    cmd = ep.load()(None, None)
    parser = cmd.get_parser(name)
    text = parser.format_help()
    description = cmd.get_description()
    assert description.strip(), '%s has no description' % name
    assert 'Example: %s' % name in ' '.join(text.split()), (
        '%s --help shows no "Example: %s ..."' % (name, name))
    undescribed = [a.option_strings[0] if a.option_strings else a.dest
                   for a in parser._actions
                   if not a.help and not isinstance(a, argparse._HelpAction)]
    assert undescribed == [], '%s: arguments without help' % name


@pytest.mark.parametrize('script', _daemons())
def test_service_help_has_an_example(script):
    out = subprocess.run([os.path.join(BIN, script), '--help'],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert 'Example: %s' % script in ' '.join(out.stdout.split()), out.stdout

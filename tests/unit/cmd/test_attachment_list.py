"""``ursa attachment list`` shows each attachment's NBD export name with
its token (what a TCP client of ursa-nbd must ask for), to whoever holds
the cluster key.  Run in-process: a new entry point is not installed in
the test venv."""

import argparse

from cinder_ursa.cmd.admin import hosts


class Master:
    def __init__(self):
        self.asked = None

    def attachments(self, ref=None, host=None):
        self.asked = (ref, host)
        return [{'volume_name': 'vol1', 'host': 'compute-1',
                 'status': 'attached', 'path': '/a/vol1',
                 'export_token': 'Tok3n'},
                {'volume_name': 'old', 'host': 'compute-1',
                 'status': 'attaching', 'path': None}]


class App:
    def __init__(self):
        self.m = Master()

    def master(self):
        return self.m


def test_attachment_list_shows_the_export_names():
    app = App()
    cmd = hosts.AttachmentList(app, None)
    args = cmd.get_parser('ursa attachment list').parse_args(
        ['--host', 'compute-1'])
    assert isinstance(args, argparse.Namespace)
    cols, rows = cmd.take_action(args)
    assert app.m.asked == (None, 'compute-1')
    got = [dict(zip(cols, r, strict=True)) for r in rows]
    assert got[0]['nbd_export'] == 'vol1~Tok3n'
    assert got[0]['path'] == '/a/vol1'
    # An attachment recorded by a master older than tokens: plain name.
    assert got[1]['nbd_export'] == 'old' and got[1]['path'] == ''

"""Serve a WSGI application on 127.0.0.1 with threads (placement, Nova's
compute API: neither ships a server of its own).

    python -m tests.e2e.wsgi_serve placement.wsgi.api:application 8778
"""

import importlib
import socketserver
import sys
from wsgiref import simple_server


class _Server(socketserver.ThreadingMixIn, simple_server.WSGIServer):
    daemon_threads = True


class _Quiet(simple_server.WSGIRequestHandler):
    def log_message(self, fmt, *args):
        sys.stderr.write('%s\n' % (fmt % args))


def main():
    target, port = sys.argv[1], int(sys.argv[2])
    # The applications parse the command line when imported.
    sys.argv = sys.argv[:1]
    module, attr = target.split(':')
    app = getattr(importlib.import_module(module), attr)
    server = simple_server.make_server('127.0.0.1', port, app,
                                       server_class=_Server,
                                       handler_class=_Quiet)
    server.serve_forever()


if __name__ == '__main__':
    main()

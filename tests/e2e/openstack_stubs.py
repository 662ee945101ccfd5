"""The few Glance and Neutron calls Nova and Cinder make for servers that
use one image and no network, answered from a thread: an image that
exists, with its bytes (1 MiB of a known pattern, with their checksums,
for volumes created from it), and empty lists of ports, networks,
security groups and extensions."""

import hashlib
import json
import re
import threading
from http import server

IMAGE_ID = '155d900f-4e14-4e4c-a73d-069cbf4541e6'
IMAGE_DATA = b'URSA-E2E-IMAGE!\n' * 65536
IMAGE = {
    'id': IMAGE_ID, 'name': 'cirros', 'status': 'active',
    'disk_format': 'raw', 'container_format': 'bare', 'size': 1048576,
    'virtual_size': 1048576, 'min_disk': 0, 'min_ram': 0,
    'visibility': 'public', 'protected': False, 'owner': 'admin',
    'os_hidden': False, 'checksum': hashlib.md5(IMAGE_DATA).hexdigest(),
    'os_hash_algo': 'sha512',
    'os_hash_value': hashlib.sha512(IMAGE_DATA).hexdigest(), 'tags': [],
    'created_at': '2026-01-01T00:00:00Z', 'updated_at': '2026-01-01T00:00:00Z',
    'file': '/v2/images/%s/file' % IMAGE_ID, 'schema': '/v2/schemas/image',
    'self': '/v2/images/%s' % IMAGE_ID}


class _Handler(server.BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        self.server.log.append('%s %s' % (self.command, self.path))

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - http.server's name
        path = self.path.split('?', 1)[0].rstrip('/')
        if path.startswith('/image'):
            # The catalog's image endpoint (Nova's [glance] names the
            # root): its own version document, as clients discover it.
            path = path[len('/image'):]
            if path in ('', '/versions'):
                # 2.16: before image locations (2.17), which Cinder then
                # does not ask for.
                return self._send(300 if path == '' else 200, {
                    'versions': [{'id': 'v2.16', 'status': 'CURRENT',
                                  'links': [{
                                      'rel': 'self',
                                      'href': 'http://127.0.0.1:%d/image/v2/'
                                      % self.server.server_port}]}]})
        if path in ('', '/v2', '/v2.0'):
            return self._send(200, {'versions': [
                {'id': 'v2.0', 'status': 'CURRENT', 'links': [
                    {'rel': 'self',
                     'href': 'http://127.0.0.1:%d/v2.0/'
                     % self.server.server_port}]}]})
        if path == '/v2/schemas/image':
            return self._send(200, {
                'name': 'image', 'links': [],
                'properties': {k: {} for k in IMAGE},
                'additionalProperties': {'type': 'string'}})
        if path == '/v2/images/%s/file' % IMAGE_ID:
            self.send_response(200)
            self.send_header('Content-Type', 'application/octet-stream')
            self.send_header('Content-Length', str(len(IMAGE_DATA)))
            self.end_headers()
            self.wfile.write(IMAGE_DATA)
            return None
        if path == '/v2/images/%s' % IMAGE_ID:
            return self._send(200, IMAGE)
        if path.startswith('/v2/images/'):
            return self._send(404, {'message': 'no such image'})
        if path == '/v2/images':
            return self._send(200, {'images': [IMAGE]})
        m = re.match(r'/v2\.0/([a-z_-]+)$', path)
        if m:
            return self._send(200, {m.group(1).replace('-', '_'): []})
        return self._send(404, {'message': 'not stubbed: %s' % path})


class Stubs:
    def __init__(self):
        self.httpd = server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
        self.httpd.log = []
        self.port = self.httpd.server_port
        self.url = 'http://127.0.0.1:%d' % self.port
        self.image_url = self.url + '/image'
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()

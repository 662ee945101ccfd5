"""A real Glance for the end-to-end stack: glance-api behind
keystonemiddleware, its images on the file store, its database on the
stack's MariaDB, served by gunicorn (Glance's WSGI app reads its
configuration directory from ``OS_GLANCE_CONFIG_DIR``).
:meth:`Glance.upload` puts the stack's image (``IMAGE_ID``: 1 MiB of a
known pattern) in it, public, as an operator uploads CirrOS."""

import hashlib
import os
import subprocess
import sys

from tests.fixtures.processes import free_port
from tests.fixtures.processes import stop_processes
from tests.fixtures.processes import wait_port

VENV_BIN = os.path.dirname(sys.executable)
VENV = os.path.dirname(VENV_BIN)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

# The stack's image: 1 MiB of a known pattern (volumes made from it are
# checked against it).
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


class Glance:
    def __init__(self, base, db_url, keystone):
        self.base = base
        self.db_url = db_url
        self.keystone = keystone
        self.port = free_port()
        self.proc = None
        self.conf = os.path.join(base, 'glance-api.conf')

    @property
    def url(self):
        return 'http://127.0.0.1:%d' % self.port

    def env(self):
        return dict(os.environ, OS_GLANCE_CONFIG_DIR=self.base,
                    PYTHONPATH=ROOT)

    def write_config(self):
        b = self.base
        for d in ('log', 'images', 'staging', 'tasks', 'cache'):
            os.makedirs(os.path.join(b, d), exist_ok=True)
        with open(self.conf, 'w') as f:
            f.write(f'''[DEFAULT]
log_file = {b}/log/glance-api.log
bind_host = 127.0.0.1
bind_port = {self.port}
worker_self_reference_url = {self.url}
enabled_backends = file:file
image_cache_dir = {b}/cache
debug = true

[database]
connection = {self.db_url}

[paste_deploy]
flavor = keystone
config_file = {VENV}/etc/glance/glance-api-paste.ini

[glance_store]
default_backend = file

[file]
filesystem_store_datadir = {b}/images

[os_glance_staging_store]
filesystem_store_datadir = {b}/staging

[os_glance_tasks_store]
filesystem_store_datadir = {b}/tasks

[oslo_concurrency]
lock_path = {b}/locks

{self.keystone.authtoken_section('glance')}''')

    def prepare(self):
        """Configuration and database: nothing that needs Keystone."""
        self.write_config()
        with open(os.path.join(self.base, 'log', 'db-sync.log'),
                  'wb') as log:
            subprocess.run([os.path.join(VENV_BIN, 'glance-manage'),
                            '--config-file', self.conf, 'db_sync'],
                           check=True, env=self.env(), stdout=log,
                           stderr=subprocess.STDOUT, timeout=300)

    def run(self):
        """glance-api, once Keystone knows its user; then the image."""
        log = open(os.path.join(self.base, 'log', 'glance-api.out'), 'ab')
        # gunicorn: clients upload images chunked (Transfer-Encoding),
        # which wsgiref's server does not decode.
        self.proc = subprocess.Popen(
            [os.path.join(VENV_BIN, 'gunicorn'), '--bind',
             '127.0.0.1:%d' % self.port, '--workers', '1', '--threads', '8',
             '--timeout', '300', '--no-control-socket',
             'glance.wsgi.api:application'],
            env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)
        wait_port(self.port, self.proc, 'glance-api', timeout=120)
        self.upload()
        return self

    def upload(self):
        """The stack's image, public, with its known id and bytes."""
        s = self.keystone.session()
        image = IMAGE
        s.post(self.url + '/v2/images', json={
            'id': image['id'], 'name': image['name'],
            'disk_format': image['disk_format'],
            'container_format': image['container_format'],
            'visibility': 'public'}, raise_exc=True)
        s.put(self.url + '/v2/images/%s/file' % image['id'],
              data=IMAGE_DATA,
              headers={'Content-Type': 'application/octet-stream'},
              raise_exc=True)
        got = s.get(self.url + '/v2/images/%s' % image['id']).json()
        if got['status'] != 'active' or got['size'] != image['size']:
            raise RuntimeError('the image did not become active in Glance: '
                               '%s' % got)

    def stop(self):
        if self.proc is not None:
            stop_processes([self.proc], 20, group=True)

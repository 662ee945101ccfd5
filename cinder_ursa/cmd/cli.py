"""ursa: the admin CLI of an Ursa cluster.

Finds the master and the cluster key from, in order: --master and
--key-file, the URSA_MASTER and URSA_KEY_FILE environment variables, or the
[ursa] section of the file named by --config-file / URSA_CONFIG (ursa-aio
prints that line).  Every listing takes ``-f json|table|value``.

Examples::

    export URSA_CONFIG=/var/tmp/ursa/ursa.conf
    ursa cluster status
    ursa volume create vol1 10G --replicas 3
    ursa volume import disk.raw vol1
    ursa volume export vol1 copy.raw
    ursa bench --pattern rand --io-size 4K --iodepth 32 --rw write

The commands live in :mod:`cinder_ursa.cmd.admin`, one module per noun;
``setup.cfg`` registers them under ``ursa.cli``.
"""

import os
import sys

from cliff import app
from cliff import commandmanager
from oslo_config import cfg

from cinder_ursa import exception
from cinder_ursa.client import master as master_mod
from cinder_ursa.client import sync
from cinder_ursa.common import auth
from cinder_ursa.common import opts as common_opts
from cinder_ursa.transport import http

VERSION = '0.1.0'


# Read when neither --key-file nor --config-file gives a key.
SYSTEM_CONF = '/etc/ursa/ursa.conf'


class UrsaApp(app.App):

    def __init__(self):
        super().__init__(
            description='Administer an Ursa cluster: status, chunk servers, '
                        'volumes, import/export, benchmarks.',
            version=VERSION,
            command_manager=commandmanager.CommandManager('ursa.cli'),
            deferred_help=True)
        self._master = None
        self._key = None

    def build_option_parser(self, description, version, argparse_kwargs=None):
        parser = super().build_option_parser(description, version,
                                             argparse_kwargs)
        parser.add_argument('--master', default=os.environ.get('URSA_MASTER'),
                            help='Master REST URL (env URSA_MASTER).')
        parser.add_argument('--key-file',
                            default=os.environ.get('URSA_KEY_FILE'),
                            help='Cluster key file (env URSA_KEY_FILE).')
        parser.add_argument('--config-file',
                            default=os.environ.get('URSA_CONFIG'),
                            help='An ursa.conf to read [ursa] master_url, '
                                 'cluster_key_file and principal from (env '
                                 'URSA_CONFIG).')
        return parser

    def _settings(self):
        urls, key_file, key = None, self.options.key_file, None
        if self.options.master:
            urls = [u for u in self.options.master.split(',') if u]
        if self.options.config_file:
            conf = cfg.ConfigOpts()
            common_opts.register_opts(conf)
            conf([], project='ursa', default_config_files=[
                self.options.config_file])
            urls = urls or conf.ursa.master_url
            key_file = key_file or conf.ursa.cluster_key_file
            key = conf.ursa.cluster_key
            # https:// masters: verified with the file's [ursa] TLS
            # options (the CLI's clients are built without a context).
            http.configure_tls(conf)
            # The principal the file names signs (admin: the cluster
            # key).
            http.configure_principal(conf)
        if not urls:
            urls = next(o.default for o in common_opts.common_opts
                        if o.name == 'master_url')
        if not key_file and not key and os.path.exists(SYSTEM_CONF) and \
                self.options.config_file != SYSTEM_CONF:
            self.options.config_file = SYSTEM_CONF
            return self._settings()
        signer = http.default_principal()
        if not key_file and not key and signer is not None:
            # A host given only a principal's key (nova_ha's, say): the
            # REST commands its role allows work; the data commands,
            # which need the cluster key, are refused by the servers.
            return urls, signer[1]
        return urls, auth.load_key(key_file, key)

    def master(self):
        if self._master is None:
            urls, self._key = self._settings()
            self._master = master_mod.MasterClient(urls, self._key)
        return self._master

    def data_cluster(self):
        master = self.master()
        return sync.SyncCluster(master.urls, self._key)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ursa = UrsaApp()
    try:
        return ursa.run(argv)
    except exception.UrsaError as e:
        print('ursa: %s' % e, file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())

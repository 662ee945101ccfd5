"""What nova_ha's daemons share: options, logging, signals."""

import faulthandler
import os
import signal

from oslo_config import cfg
from oslo_log import log as logging

from nova_ha import opts


def setup(argv, prog, description):
    conf = cfg.ConfigOpts()
    opts.register_opts(conf)
    logging.register_options(conf)
    conf(argv, project='nova-ha', prog=prog, description=description)
    logging.setup(conf, 'nova-ha')
    os.makedirs(conf.state_path, exist_ok=True)
    # kill -USR1 <pid> writes every thread's stack to the log (stderr).
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    return conf


def stop_on_signals(stop):
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop())

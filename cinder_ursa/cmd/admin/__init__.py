"""The commands of ``ursa``, the admin CLI (:mod:`cinder_ursa.cmd.cli`),
one module per noun: ``cluster`` (the cluster and its chunk servers),
``volumes``, ``snapshots``, ``hosts``, ``data`` (import, export, check,
bench).  ``setup.cfg`` registers each under ``ursa.cli``."""

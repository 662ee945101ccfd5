"""Sphinx configuration of the cinder-ursa release notes (reno)."""

project = 'cinder-ursa Release Notes'
copyright = '2026, cinder-ursa developers'
extensions = ['reno.sphinxext']
master_doc = 'index'
exclude_patterns = ['_build']
html_theme = 'alabaster'

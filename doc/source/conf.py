# Sphinx configuration of the cinder-ursa documentation (tox -e docs).

project = 'cinder-ursa'
copyright = 'cinder-ursa developers'

extensions = [
    'sphinx.ext.graphviz',
    'oslo_config.sphinxext',
    'cliff.sphinxext',
]

# cliff.sphinxext: commands come from these entry point groups.
autoprogram_cliff_application = 'ursa'

master_doc = 'index'
exclude_patterns = ['_build']
pygments_style = 'sphinx'
graphviz_output_format = 'svg'
html_theme = 'alabaster'
html_theme_options = {
    'description': 'Replicated block storage for OpenStack, its Cinder '
                   'driver and compute host HA',
    'fixed_sidebar': True,
}
html_static_path = ['_static']

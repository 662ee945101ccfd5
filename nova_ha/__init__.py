"""nova_ha: detect failed compute hosts, fence them, evacuate their
instances through the Nova API, coordinated by tooz."""

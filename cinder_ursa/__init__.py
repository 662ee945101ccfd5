"""cinder-ursa: Ursa replicated block storage, its Cinder driver, nova_ha."""

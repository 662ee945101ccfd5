"""The driver's options for oslo-config-generator (a cinder.conf backend
section); importing the driver needs the cinder package."""


def list_opts():
    from cinder_ursa.volume import driver
    return [('ursa', driver.ursa_opts)]

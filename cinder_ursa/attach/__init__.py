"""The host attach agent: volumes attached to this host, served as files
of a FUSE filesystem (ursa-attach)."""

"""The real parts the tests and benchmarks run against: Debian's own Asterisk in a
cached chroot (``testbed.asterisk``) and SIP phones that register and answer qualify
on cue (``testbed.phones``). Not part of the installed product.
"""

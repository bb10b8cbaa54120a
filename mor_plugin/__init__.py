"""Registration status of MOR's SIP devices: the collector that runs on every Asterisk server."""

#: the package's version (pyproject.toml reads it from here: one place to change it); a
#: literal, because importlib.metadata would cost every cron run ~25 ms to look it up
__version__ = "0.1.0"

"""Registration status of MOR's SIP devices: the collector that runs on every Asterisk server."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mor-regstatus")
except PackageNotFoundError:  # running from a checkout that was not installed
    __version__ = "0.0.0"

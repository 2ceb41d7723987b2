"""Callbox's shared core: the wire protocol and the call state machine, pure Python used by client and server."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("callbox")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

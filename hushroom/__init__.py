"""hushroom: the umbrella command and the configuration shared by every process."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hushroom")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]

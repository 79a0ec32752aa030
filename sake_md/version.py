"""The version of sake_md. Its one source is pyproject.toml; an installed package reads it back from
its metadata."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sake-md")
except PackageNotFoundError:  # a source tree imported without being installed (pip install -e . fixes it)
    __version__ = "0+unknown"

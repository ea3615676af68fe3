"""FAKE tensorrt for `setup.sh --check` tests: only the version JetPack 6.0 ships."""

__version__ = "10.3.0"

"""fisherpack: prune and quantize trained networks by Fisher information into small files."""

__version__ = "0.1.0"

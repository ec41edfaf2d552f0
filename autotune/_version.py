"""The package's version: a leaf, so a module needing it does not import the package root."""

__version__ = "0.1.0"

"""The package version, in a module of its own so any room can record it without importing the
package root."""
__version__ = "0.1.0"
__all__ = ["__version__"]

"""Compatibility path (plugin API 1.0): feature taps now live in :mod:`kdzoo.api.taps`."""

from kdzoo.api.taps import tapped  # noqa: F401

__all__ = ["tapped"]

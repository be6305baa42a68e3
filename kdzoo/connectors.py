"""Compatibility path (plugin API 1.0): the connectors now live in :mod:`kdzoo.api.connectors`."""

from kdzoo.api.connectors import *  # noqa: F401,F403

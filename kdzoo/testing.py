"""Compatibility path (plugin API 1.0): test helpers for plugin authors now live in
:mod:`kdzoo.authoring.testing`."""

from kdzoo.authoring.testing import *  # noqa: F401,F403
from kdzoo.authoring.testing import __all__  # noqa: F401

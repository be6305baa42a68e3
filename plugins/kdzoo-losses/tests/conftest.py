"""Shared fixtures of the kdzoo-losses tests."""

from __future__ import annotations

import pytest

from kdzoo.host.loading import load_plugins


@pytest.fixture(scope="module")
def host():
    """A plugin host with this plugin alone (no other installed plugin can interfere)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDZOO_LOAD_PLUGINS", "kdzoo-losses")
        return load_plugins()

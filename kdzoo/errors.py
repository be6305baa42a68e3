"""User-facing errors: the CLI prints them without a traceback and exits with code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class KdzooError(Exception):
    """An error caused by the user's input (spec, paths, plugins), not by a kdzoo bug."""

    exit_code = 2


class SpecError(KdzooError):
    """A spec that cannot be run. ``problems`` holds one line per offending field."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid spec {source}:\n{lines}")


class PluginError(KdzooError):
    """A plugin that cannot be loaded or that registers something invalid."""


class TrainingError(KdzooError):
    """A run that had to stop (for example a non-finite loss)."""

    exit_code = 1


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'kd'?)`` for the closest choice, or an empty string."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


class StorageError(KdzooError):
    """A file kdzoo could not write (disk full, no permission): the message names the path;
    the last good state is kept. Ends a grid too: the next arm would fail the same way."""

    exit_code = 1


class ComponentError(TrainingError):
    """Plugin code raised while a run used it. The message names the component, its
    plugin, the phase (and epoch and step) and the original error; ``--debug`` or
    ``KDZOO_DEBUG=1`` adds the traceback. A grid marks the arm failed and goes on."""

    exit_code = 1

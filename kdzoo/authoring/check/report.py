"""What ``kdzoo plugins check`` reports: one result per check, grouped by plugin, as text or JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclass
class CheckResult:
    plugin: str
    check: str  # resolve, import, plugin-api, hook, security, register, smoke
    subject: str  # what was checked: the plugin, a hook function, "loss 'kd'"
    status: str  # pass, fail or skip
    detail: str


@dataclass
class PluginSummary:
    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    api: str | None = None
    components: dict[str, list[str]] = field(default_factory=dict)  # kind -> names


@dataclass
class CheckReport:
    target: str
    plugins: list[PluginSummary] = field(default_factory=list)
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.results) and not any(r.status == FAIL for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == FAIL]

    def counts(self) -> dict[str, int]:
        return {status: sum(r.status == status for r in self.results) for status in (PASS, FAIL, SKIP)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "ok": self.ok,
            "counts": self.counts(),
            "plugins": [asdict(p) for p in self.plugins],
            "results": [asdict(r) for r in self.results],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        lines = [f"kdzoo plugins check {self.target}"]
        width = max((len(r.subject) for r in self.results), default=0)
        check_width = max((len(r.check) for r in self.results), default=0)
        shown_plugin = None
        for result in self.results:
            if result.plugin != shown_plugin:
                shown_plugin = result.plugin
                lines.append(self._plugin_heading(result.plugin))
            lines.append(f"  {result.status.upper():4}  {result.check:<{check_width}}  {result.subject:<{width}}  {result.detail}")
        counts = self.counts()
        verdict = "OK" if self.ok else "FAILED"
        lines.append(f"{verdict}: {counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped")
        return "\n".join(lines)

    def _plugin_heading(self, name: str) -> str:
        summary = next((p for p in self.plugins if p.name == name), None)
        if summary is None:
            return f"{name}:"
        where = [f"module {summary.module}"]
        if summary.distribution:
            where.insert(0, f"distribution {summary.distribution} {summary.version or ''}".rstrip())
        return f"plugin '{name}' ({', '.join(where)}):"


def one_line(text: str) -> str:
    return " ".join(str(text).split())


class Checks:
    """Collects the results of one plugin's checks (added to the report in one block, so
    that a target with several plugins reads plugin by plugin)."""

    def __init__(self, plugin: str):
        self.plugin = plugin
        self.results: list[CheckResult] = []

    def add(self, check: str, subject: str, status: str, detail: str) -> CheckResult:
        result = CheckResult(self.plugin, check, subject, status, one_line(detail))
        self.results.append(result)
        return result

    @property
    def failed(self) -> int:
        return sum(r.status == FAIL for r in self.results)

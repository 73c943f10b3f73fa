"""pytest plugin: counts the tests that need a real ComfyUI and, when told to, fails the run if any of them skipped.

A test needs a real ComfyUI when :func:`tests.helpers.comfy_env.require_comfyui` is called while it runs or while one
of its fixtures is set up (a module-scoped fixture counts for every test that uses it), or when it skipped with a
reason that names ``COMFYUI_PATH``. The terminal summary says how many of those tests ran, passed, failed and
skipped. With ``GAS_REQUIRE_COMFYUI=1`` (set by ``.ci/test`` when it found a ComfyUI) a skipped one, or none at all
having run, turns a passing run into a failing one (exit status 1): CI must not go green by skipping them.

``tests/conftest.py`` imports the hooks; elsewhere load it with ``-p tests.helpers.comfy_accounting``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.helpers.comfy_env import ENV_VAR, require_comfyui_calls

REQUIRE_ENV = "GAS_REQUIRE_COMFYUI"


@dataclass
class _Accounts:
    comfy_fixtures: set[str] = field(default_factory=set)  # fixtures whose setup called require_comfyui
    comfy_tests: set[str] = field(default_factory=set)  # node ids of tests that need ComfyUI
    fixturenames: dict[str, tuple[str, ...]] = field(default_factory=dict)
    outcome: dict[str, str] = field(default_factory=dict)  # node id -> passed / failed / skipped
    skip_reason: dict[str, str] = field(default_factory=dict)


_ACCOUNTS = _Accounts()


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> Any:
    before = require_comfyui_calls()
    yield
    if require_comfyui_calls() != before:
        _ACCOUNTS.comfy_fixtures.add(fixturedef.argname)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    before = require_comfyui_calls()
    _ACCOUNTS.fixturenames[item.nodeid] = tuple(getattr(item, "fixturenames", ()))
    yield
    if require_comfyui_calls() != before:
        _ACCOUNTS.comfy_tests.add(item.nodeid)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    accounts = _ACCOUNTS
    if report.failed:
        accounts.outcome[report.nodeid] = "failed"
    elif report.skipped:
        accounts.outcome.setdefault(report.nodeid, "skipped")
        accounts.skip_reason[report.nodeid] = _skip_reason(report)
    elif report.when == "call":
        accounts.outcome.setdefault(report.nodeid, "passed")


def comfy_test_outcomes() -> dict[str, str]:
    """Outcome (passed / failed / skipped) of every test of this session that needs a real ComfyUI."""
    accounts = _ACCOUNTS
    result = {}
    for nodeid, outcome in accounts.outcome.items():
        uses_fixture = bool(accounts.comfy_fixtures.intersection(accounts.fixturenames.get(nodeid, ())))
        names_env = ENV_VAR in accounts.skip_reason.get(nodeid, "")
        if nodeid in accounts.comfy_tests or uses_fixture or names_env:
            result[nodeid] = outcome
    return result


def _required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").strip() not in ("", "0")


def _problems(outcomes: dict[str, str]) -> list[str]:
    """Why the run must fail under GAS_REQUIRE_COMFYUI=1 (empty when it need not)."""
    skipped = [n for n, o in outcomes.items() if o == "skipped"]
    problems = [f"{n}: skipped ({_ACCOUNTS.skip_reason.get(n, '')})" for n in skipped]
    if not any(o != "skipped" for o in outcomes.values()):
        problems.append("no real-ComfyUI test ran")
    return problems


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _required() and exitstatus in (0, 5) and _problems(comfy_test_outcomes()):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    outcomes = comfy_test_outcomes()
    counts = {kind: sum(o == kind for o in outcomes.values()) for kind in ("passed", "failed", "skipped")}
    where = os.environ.get(ENV_VAR, "").strip() or "unset"
    terminalreporter.write_line(
        f"real-ComfyUI tests ({ENV_VAR}={where}): {counts['passed'] + counts['failed']} ran "
        f"({counts['passed']} passed, {counts['failed']} failed), {counts['skipped']} skipped"
    )
    per_file: dict[str, dict[str, int]] = {}
    for nodeid, outcome in outcomes.items():
        tally = per_file.setdefault(nodeid.split("::", 1)[0], {"passed": 0, "failed": 0, "skipped": 0})
        tally[outcome] = tally.get(outcome, 0) + 1
    for name, tally in sorted(per_file.items()):
        terminalreporter.write_line(f"  {name}: {tally['passed']} passed, {tally['failed']} failed, "
                                    f"{tally['skipped']} skipped")
    if _required():
        problems = _problems(outcomes)
        for line in problems:
            terminalreporter.write_line(f"{REQUIRE_ENV}=1: {line}", red=True)
        if problems:
            terminalreporter.write_line(f"{REQUIRE_ENV}=1: real-ComfyUI tests must run, not skip: run failed",
                                        red=True, bold=True)

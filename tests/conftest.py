"""Fixtures and hooks every test file shares. The backends under test, as data,
are in backend_table.py (its names are re-exported here for older imports).

In CI, .ci/run installs the Debian packages that some tests otherwise skip for
and names them in $HETADAM_CI_PROVIDES: there, a test that still skips asking
for one of them ("apt-get install PACKAGE" in its reason) fails the run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from backend_table import (
    BACKENDS,
    BY_NAME,
    GOLDEN_CACHE,
    BackendInfo,
    backend_of,
    close_backends,
    params_over_backends,
    params_over_backends_and_numerics,
    skip_reason,
)

from hetadam.numerics import golden

__all__ = [
    "BACKENDS",
    "BY_NAME",
    "BackendInfo",
    "backend_of",
    "params_over_backends",
    "params_over_backends_and_numerics",
    "skip_reason",
]


@pytest.fixture(scope="session", autouse=True)
def _close_backends() -> Iterator[None]:
    yield
    close_backends()


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The golden vectors of the fixed kernel, written once per spec (build/golden/<hash>)."""
    return golden.cached(GOLDEN_CACHE)


CI_PROVIDES_ENV = "HETADAM_CI_PROVIDES"
"""Debian packages the CI installed (space-separated), set by .ci/run."""


class SkipsTheCiProvidesFor:
    """A plugin (global, so that it sees sim/'s tests too): a skip whose reason asks for a
    package the CI installed fails the run, with the list of such tests at the end."""

    def __init__(self, packages: list[str]) -> None:
        self.packages = packages
        self.missed: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not report.skipped or hasattr(report, "wasxfail"):
            return
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if any(f"apt-get install {package}" in reason for package in self.packages):
            self.missed.append(f"{report.nodeid}: {reason}")

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.missed and exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.missed:
            terminalreporter.section(f"skipped although the CI installed what they need (${CI_PROVIDES_ENV})", red=True)
            for line in self.missed:
                terminalreporter.write_line(line)


def pytest_configure(config: pytest.Config) -> None:
    packages = os.environ.get(CI_PROVIDES_ENV, "").split()
    if packages:
        config.pluginmanager.register(SkipsTheCiProvidesFor(packages), "hetadam-ci-skips")

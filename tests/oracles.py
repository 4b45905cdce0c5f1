"""Pytest plugin: a missing oracle (PyTorch, the notebook runners, Fashion-MNIST) is a skip for a
learner and a failure in CI.

Several kinds of evidence need something minicnn does not: PyTorch for the parity tests, Jupyter's
runners for the notebooks, the real Fashion-MNIST for the accuracy checks. Without them those tests
skip, so a learner without PyTorch still gets a green run, and the summary names what was skipped
and why. ``MINICNN_REQUIRE_ORACLES=1`` (set by ``.ci/run``) turns those skips into failures: a CI
machine that lost PyTorch must not report the parity tests as passed by skipping them all.
Other skips (one Numba thread, a CPU that is not x86) are about the machine and stay skips.
"""

import os
import re

import pytest

# importorskip says "could not import 'torch': ..."; the data tests name Fashion-MNIST
ORACLE_SKIP = re.compile(r"could not import|fashion-mnist", re.IGNORECASE)
REQUIRED = os.environ.get("MINICNN_REQUIRE_ORACLES", "") not in ("", "0")


def _skip_reason(report):
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _require(report):
    """Turn a skipped report for a missing oracle into a failure naming it (only when required)."""
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = _skip_reason(report)
        if ORACLE_SKIP.search(reason):
            report.oracle_reason = reason
            if REQUIRED:
                report.outcome = "failed"
                report.longrepr = f"MINICNN_REQUIRE_ORACLES=1 and an oracle is missing: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _require(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _require(outcome.get_result())


def pytest_terminal_summary(terminalreporter):
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if getattr(r, "oracle_reason", None)]
    if skipped:
        reasons = sorted({r.oracle_reason.replace("Skipped: ", "") for r in skipped})
        terminalreporter.write_line(
            f"{len(skipped)} tests/modules skipped for a missing oracle (set MINICNN_REQUIRE_ORACLES=1 to fail instead): "
            + "; ".join(reasons)
        )

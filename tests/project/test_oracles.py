"""``MINICNN_REQUIRE_ORACLES=1`` turns skips for a missing oracle into failures (tests/oracles.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]

SAMPLE = """
import pytest

def test_needs_a_missing_oracle():
    pytest.importorskip("a_module_that_is_not_installed")

@pytest.mark.skipif(True, reason="Fashion-MNIST not installed on this machine")
def test_needs_the_data():
    pass

@pytest.mark.skipif(True, reason="needs 2 Numba threads")
def test_about_the_machine():
    pass
"""


def run_pytest(tmp_path, required, source):
    (tmp_path / "test_sample.py").write_text(source)
    env = {**os.environ, "PYTHONPATH": str(TESTS), "MINICNN_REQUIRE_ORACLES": "1" if required else ""}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "oracles", "-p", "no:cacheprovider", "-q", "-rs",
                           str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True)


@pytest.mark.parametrize("required", [False, True])
def test_a_missing_oracle_is_a_named_skip_or_a_failure(tmp_path, required):
    done = run_pytest(tmp_path, required, SAMPLE)
    if required:
        assert done.returncode == 1, done.stdout
        # a skip in the test body fails the test, a skip mark errors its setup
        assert "1 failed, 1 skipped, 1 error" in done.stdout, done.stdout
        assert "an oracle is missing: Skipped: could not import 'a_module_that_is_not_installed'" in done.stdout
        assert "an oracle is missing: Skipped: Fashion-MNIST" in done.stdout
        assert "SKIPPED [1] test_sample.py:11: needs 2 Numba threads" in done.stdout   # the machine's: still a skip
    else:
        assert done.returncode == 0, done.stdout
        assert "3 skipped" in done.stdout, done.stdout
        assert "2 tests/modules skipped for a missing oracle" in done.stdout, done.stdout


@pytest.mark.parametrize("required", [False, True])
def test_a_module_skipped_for_a_missing_oracle_fails_its_collection(tmp_path, required):
    done = run_pytest(tmp_path, required, 'import pytest\npytest.importorskip("another_missing_module")\n')
    if required:
        assert done.returncode != 0 and "1 error" in done.stdout, done.stdout
        assert "an oracle is missing: Skipped: could not import 'another_missing_module'" in done.stdout
    else:
        assert done.returncode in (0, 5) and "1 skipped" in done.stdout, done.stdout   # 5: no test collected

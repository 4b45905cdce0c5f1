#!/usr/bin/env python3
"""Plant each bug of ``tests/mutation/mutants.py`` alone in a temporary copy of the repository and
check that its test subset fails. Exit status 1 if a mutant survives (a behaviour no test guards) or
no longer applies (its source text was not found exactly once: the code changed, so update the
mutant), 0 if every mutant is caught.

    python .ci/mutation_check.py                 # all mutants (a few minutes)
    python .ci/mutation_check.py -k Dropout      # those whose name contains "Dropout"
    python .ci/mutation_check.py --list
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "mutation"))

from mutants import MUTANTS  # noqa: E402


def repository_files():
    """Tracked files and untracked ones git does not ignore (what a commit would hold)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [name for name in out.split("\0") if name and (ROOT / name).is_file()]


def stale(mutants, root):
    """Messages for the mutants whose source text is not found exactly once under ``root``."""
    problems = []
    for m in mutants:
        path = root / m.path
        count = path.read_text().count(m.old) if path.is_file() else 0
        if count != 1:
            problems.append(f"mutant {m.name!r}: its source text occurs {count} times in {m.path} (expected once); "
                            "the code changed: update tests/mutation/mutants.py")
    return problems


def run_mutant(m, copy, env):
    """Plant ``m`` in ``copy``, run its tests, put the file back (bytes and time stamp); pytest's exit code."""
    path = copy / m.path
    original, stat = path.read_bytes(), path.stat()
    path.write_text(original.decode().replace(m.old, m.new))
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *m.tests],
                              cwd=copy, env=env, capture_output=True, text=True)
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))   # unchanged file: Numba's cache stays valid
    return done


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only the mutants whose name contains this text")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if args.k.lower() in m.name.lower()]
    if args.list:
        for m in mutants:
            print(f"{m.name}  ({m.path}; tests: {' '.join(m.tests)})")
        return 0
    problems = stale(mutants, ROOT)
    if problems:
        print("\n".join(problems))
        return 1
    print(f"mutation check: {len(mutants)} mutants, each located by its exact source text "
          "(a mutant whose text is not found fails the check: update tests/mutation/mutants.py)")
    failures = []
    with tempfile.TemporaryDirectory(prefix="minicnn-mutants-") as tmp:
        copy = Path(tmp) / "repo"
        for name in repository_files():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
        env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1",
               "NUMBA_CACHE_DIR": str(Path(tmp) / "numba_cache"), "MPLBACKEND": "Agg"}
        env.pop("MINICNN_REQUIRE_ORACLES", None)
        for i, m in enumerate(mutants, 1):
            start = time.perf_counter()
            done = run_mutant(m, copy, env)
            seconds = time.perf_counter() - start
            if done.returncode == 1:
                verdict = "caught"
            elif done.returncode == 0:
                verdict = "SURVIVED: no test failed"
            else:
                verdict = f"ERROR: pytest exited with {done.returncode}"
            print(f"[{i:2d}/{len(mutants)}] {verdict:<10} {seconds:5.1f}s  {m.name}", flush=True)
            if verdict != "caught":
                failures.append(m.name)
                print("    " + "\n    ".join(done.stdout.strip().splitlines()[-5:]))
    if failures:
        print(f"mutation check FAILED: {len(failures)} of {len(mutants)} mutants not caught: {failures}")
        return 1
    print(f"mutation check passed: all {len(mutants)} mutants caught")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Every planted bug of ``tests/mutation/mutants.py`` still finds its source text (the mutation check
itself, ``.ci/mutation_check.py``, runs in CI: a few minutes), and the README counts them."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_mutant_still_applies_and_names_existing_tests():
    check = load(ROOT / ".ci" / "mutation_check.py")
    assert len(check.MUTANTS) >= 20
    assert check.stale(check.MUTANTS, ROOT) == []
    assert len({m.name for m in check.MUTANTS}) == len(check.MUTANTS)
    for m in check.MUTANTS:
        assert m.old != m.new, m.name
        files = [a for a in m.tests if a.startswith("tests/")]
        assert files and all((ROOT / f).is_file() for f in files), m.name


def test_a_stale_mutant_is_reported_by_name(tmp_path):
    check = load(ROOT / ".ci" / "mutation_check.py")
    m = check.MUTANTS[0]._replace(old="text that is not in the file")
    (tmp_path / m.path).parent.mkdir(parents=True)
    (tmp_path / m.path).write_text((ROOT / m.path).read_text())
    (problem,) = check.stale([m], tmp_path)
    assert m.name in problem and "occurs 0 times" in problem and "update tests/mutation/mutants.py" in problem


def test_the_readme_counts_the_mutants():
    check = load(ROOT / ".ci" / "mutation_check.py")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (count,) = re.findall(r"mutation_check\.py` plants (\d+)\s+plausible", readme)
    assert int(count) == len(check.MUTANTS)

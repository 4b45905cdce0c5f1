"""benchmarks/RESULTS.md and the README's speed sentence quote the JSON the benchmark runs wrote."""

import importlib.util
import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
while not (ROOT / "benchmarks").is_dir():   # from tests/ or a folder below it
    ROOT = ROOT.parent


def results_tables():
    spec = importlib.util.spec_from_file_location("results_tables", ROOT / "benchmarks" / "results_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_table_of_the_recorded_runs_is_in_results_md_verbatim():
    text = (ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    tables = results_tables().tables()
    assert len(tables) >= 6, [title for title, _ in tables]
    for title, table in tables:
        assert table in text, f"RESULTS.md lacks the {title} table of benchmarks/results/ (run benchmarks/results_tables.py)"


def test_readme_speed_figures_are_those_of_results_md():
    bench = json.loads((ROOT / "benchmarks" / "results" / "bench.json").read_text())
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    small = next(r for r in bench["steady"] if r["batch"] == 32)["speedup"]
    blog, blog_glibc = (next(r for r in bench["training"] if r["model"] == "blog" and r["mode"] == "train"
                             and r["glibc_tunables"] is glibc)["speedup"] for glibc in (False, True))
    sentence = re.search(r"On a 2-core CPU it trains .*?\)\)", text).group(0)
    assert f"the small Fashion-MNIST CNN {small:.1f}x as fast as PyTorch" in sentence, sentence
    assert f"the blog's 224x224 model {blog:.1f}x as fast ({blog_glibc:.1f}x when" in sentence, sentence
    assert bench["machine"]["date"][:10] in sentence, sentence

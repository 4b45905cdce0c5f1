"""benchmarks/RESULTS.md and the README's speed sentence quote the JSON the benchmark runs wrote."""

import importlib.util
import json
import pathlib
import re

import pytest

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


def test_the_runtime_variants_change_what_they_say(tmp_path):
    """``bench_runtime.py``'s variants: no-pool takes nothing from the pool, no-lanes runs every part on
    the calling thread, one-core keeps one lane; each child then trains and prints its step times."""
    import os
    import subprocess
    import sys

    code = """
import json, sys, threading
sys.path.insert(0, {bench!r})
import bench_runtime
from minicnn.kernels.numba import _buffers, _threads, get_num_threads
variant = sys.argv[1]
bench_runtime.apply_variant(variant)
net, shape = bench_runtime.build("deep")
import numpy as np
x = np.random.default_rng(0).random((16, *shape), dtype=np.float32)
net.train_on_batch(x, np.arange(16) % 10)
print(json.dumps({{"pooled": _buffers.POOL.nbytes, "lanes": get_num_threads(),
                  "alive": sum(t.name == "minicnn-lane" for t in threading.enumerate())}}))
""".format(bench=str(ROOT / "benchmarks"))
    script = tmp_path / "variant.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NUMBA_NUM_THREADS": "2"}
    seen = {}
    for variant in ("default", "no-pool", "no-lanes", "one-core"):
        run = subprocess.run([sys.executable, str(script), variant], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        seen[variant] = json.loads(run.stdout.splitlines()[-1])
    assert seen["default"]["pooled"] > 0 and seen["no-pool"]["pooled"] == 0
    assert seen["default"]["alive"] == 1 and seen["no-lanes"]["alive"] == 0   # no lane thread ever started
    assert seen["one-core"]["lanes"] == 1 and seen["one-core"]["alive"] == 0
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_runtime.py"), "--child", "one-core",
                          "small", "4", "3"], env=env, capture_output=True, text=True, check=True).stdout
    times = json.loads(out.splitlines()[-1])
    assert len(times) == 3 and all(t > 0 for t in times)




def test_same_process_before_after_takes_turns_flipping_the_order_each_block(monkeypatch):
    """``bench_before_after --same-process``: the copies take turns block by block, the order flipping
    each block (a, b, then b, a), so neither always runs right after the pause; each median is of
    that copy's own calls. A fake clock stands in for time: a call of "a" lasts 1 ms, of "b" 3 ms."""
    spec = importlib.util.spec_from_file_location("bench_before_after", ROOT / "benchmarks" / "bench_before_after.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class Clock:
        now = 0.0

        def perf_counter(self):
            return self.now

        def sleep(self, seconds):
            self.now += seconds

    clock, log = Clock(), []
    monkeypatch.setattr(module, "time", clock)

    def call(label, seconds):
        def f():
            log.append(label)
            clock.now += seconds
        return f

    ms = module._in_turns({"a": call("a", 0.001), "b": call("b", 0.003)}, blocks=4, block_s=0.02, warm_s=0.005)
    runs = [label for i, label in enumerate(log) if i == 0 or log[i - 1] != label]
    # two first calls each, then blocks a b | b a | a b | b a (without the flip: a b a b a b a b a b)
    assert runs == ["a", "b", "a", "b", "a", "b", "a"], runs
    assert ms["a"] == pytest.approx(1.0) and ms["b"] == pytest.approx(3.0), ms

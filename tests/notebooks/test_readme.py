"""README.md tells the truth: its Python blocks run as written, top to bottom, on a CPU-only machine."""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

from minicnn.utils import set_random_seed

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"

pytestmark = pytest.mark.usefixtures("default_settings")


def python_blocks():
    """The ```python blocks of README.md, in order."""
    return re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


def test_readme_python_blocks_run_in_order_in_one_namespace(tmp_path, monkeypatch, capsys):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = python_blocks()
    assert len(blocks) >= 4, "the README's Python blocks were not found"
    monkeypatch.chdir(tmp_path)                       # whatever a block writes lands here
    set_random_seed(0)                                # the blocks draw from minicnn's generator: a failure repeats
    namespace, needs_torch, scripts = {"__name__": "__readme__"}, [], []
    has_torch = importlib.util.find_spec("torch") is not None
    for number, code in enumerate(blocks, start=1):
        if re.search(r"^(import torch\b|from minicnn.interop import .*fit_distributed)", code, flags=re.M) and not has_torch:
            needs_torch.append(number)
            continue
        if re.search(r'^if __name__ == "__main__":', code, flags=re.M):
            scripts.append((number, code))   # a script of its own (its processes import it): run as one below
            continue
        exec(compile(code, f"README.md python block {number}", "exec"), namespace)
        plt.close("all")
    out = capsys.readouterr().out
    for number, code in scripts:
        script = tmp_path / f"readme_block_{number}.py"
        script.write_text(code, encoding="utf-8")
        root = str(README.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        run = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, f"README python block {number} failed:\n{run.stdout}\n{run.stderr}"
        out += run.stdout
    # the blog block prints what it computed; the model learned something on the 7,000-image sample
    accuracy = float(re.search(r"test accuracy (\d\.\d+)", out).group(1))
    assert accuracy > 0.75, out
    assert re.search(r"predicted classes \[.*\] true classes \[.*\]", out)
    # the gradient check of the trained float32 model passes on every row and says how it checked
    assert "in float64 (on a float64 copy of the float32 model)" in out and " NO" not in out, out
    assert namespace["model"].layers[0].params["kernel"].dtype == "float32"
    if needs_torch:
        pytest.skip(f"README python block(s) {needs_torch} need PyTorch, which is not installed")
    accuracy = float(re.search(r"trained by 2 PyTorch processes, back in minicnn: test accuracy (\d\.\d+)", out).group(1))
    assert accuracy > 0.5, out   # one epoch on 2,000 sample images, a tiny CNN


def test_readme_figures_are_those_of_the_recorded_runs():
    """The accuracy and times README quotes for `minicnn train` are the quietest recorded run's
    (``benchmarks/readme_figures.py`` appends every run to the JSON file)."""
    import json

    runs = json.loads((README.parent / "benchmarks" / "results" / "readme_figures.json").read_text())["runs"]
    text = " ".join(README.read_text(encoding="utf-8").split())
    quiet = min((r for r in runs if r.get("full")), key=lambda r: r["full"]["load_average_before"])
    assert f"reaches {quiet['sample']['test_accuracy']:.1%} test accuracy" in text
    assert f"training for {quiet['sample']['train_seconds']} s on 2 cores" in text
    assert f"reaches {quiet['full']['test_accuracy']:.1%} in about" in text and f"({quiet['full']['train_seconds']} s)" in text
    timed = min((r for r in runs if r.get("compile")), key=lambda r: r["first_run"]["load_average_before"])
    assert f"about {timed['compile']['compile_seconds']:.0f} s while Numba compiles" in text
    assert all(r["sample"]["test_accuracy"] == runs[0]["sample"]["test_accuracy"] for r in runs)   # seed 0 repeats

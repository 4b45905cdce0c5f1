"""README.md tells the truth: its Python blocks run as written, top to bottom, on a CPU-only machine."""

import importlib.util
import pathlib
import re

import pytest

from minicnn.utils import set_random_seed

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"

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
    namespace, needs_torch = {"__name__": "__readme__"}, []
    has_torch = importlib.util.find_spec("torch") is not None
    for number, code in enumerate(blocks, start=1):
        if re.search(r"^import torch\b", code, flags=re.M) and not has_torch:
            needs_torch.append(number)
            continue
        exec(compile(code, f"README.md python block {number}", "exec"), namespace)
        plt.close("all")
    out = capsys.readouterr().out
    # the blog block prints what it computed; the model learned something on the 7,000-image sample
    accuracy = float(re.search(r"test accuracy (\d\.\d+)", out).group(1))
    assert accuracy > 0.75, out
    assert re.search(r"predicted classes \[.*\] true classes \[.*\]", out)
    # the gradient check of the trained float32 model passes on every row and says how it checked
    assert "in float64 (on a float64 copy of the float32 model)" in out and " NO" not in out, out
    assert namespace["model"].layers[0].params["kernel"].dtype == "float32"
    if needs_torch:
        pytest.skip(f"README python block(s) {needs_torch} need PyTorch, which is not installed")
    assert "one PyTorch training step on the CPU" in out


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

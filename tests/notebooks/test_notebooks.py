"""The tutorial notebooks: stored without outputs, in sync with their sources, and runnable top to bottom.

``notebooks/NN_topic.py`` (jupytext py:percent) is the source of truth; ``notebooks/NN_topic.ipynb`` is
generated from it with ``jupytext --update --to ipynb notebooks/NN_topic.py`` (``--update`` keeps the cell ids) and committed with no outputs.
Each notebook is executed in a fresh ``python3`` kernel in smoke mode (``MINICNN_SMOKE=1``: fewer images
and epochs) with a headless matplotlib (``MPLBACKEND=Agg``); its ``assert`` cells are the test. The
kernel inherits this process's environment, and the files a notebook writes go to a temporary folder
(``MINICNN_NOTEBOOK_OUT``), never into the repository; its temporary folders are deleted by the end.

Also here: the learner copies (``notebooks/make_learner_copies.py``: every exercise's check fails on
its stub), the README's list of notebooks, and the progress bar's behaviour inside a notebook.
"""

import json
import shutil
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
SOURCES = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT = 300   # seconds per cell; in smoke mode a whole notebook takes well under two minutes


def _ids(paths):
    return [p.stem for p in paths]


def test_every_source_has_a_notebook_and_back():
    assert SOURCES, f"no notebook sources found in {NOTEBOOK_DIR}"
    assert [p.stem for p in SOURCES] == [p.stem for p in NOTEBOOKS], (
        "each notebooks/NN_topic.py needs its notebooks/NN_topic.ipynb (run `jupytext --update --to ipynb` on it), "
        "and each .ipynb its .py source"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_stored_without_outputs(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    dirty = [
        i for i, cell in enumerate(nb["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; store the notebook cleared"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_matches_its_source(path):
    jupytext = pytest.importorskip("jupytext")
    source = jupytext.read(path.with_suffix(".py"))
    stored = jupytext.read(path)
    cells = [(c.cell_type, c.source) for c in source.cells]
    assert [(c.cell_type, c.source) for c in stored.cells] == cells, (
        f"{path.name} differs from {path.with_suffix('.py').name}: regenerate it with "
        f"`jupytext --update --to ipynb {path.with_suffix('.py').relative_to(NOTEBOOK_DIR.parent)}`"
    )


def _run_in_smoke_mode(path, tmp_path, monkeypatch, allow_errors=False):
    """Execute notebook ``path`` in a fresh kernel, in smoke mode, from a copy in ``tmp_path``; returns it.

    The kernel's temporary folder (``TMPDIR``) is a folder of its own, which must be empty at the end.
    """
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("MINICNN_SMOKE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("MINICNN_NOTEBOOK_OUT", str(tmp_path / "out"))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    work = tmp_path / "run"                   # the kernel's working directory: a copy, not the repository
    work.mkdir(exist_ok=True)
    if path.parent != work:
        shutil.copy(path, work / path.name)
    nb = nbformat.read(work / path.name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", allow_errors=allow_errors,
                                     resources={"metadata": {"path": str(work)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        pytest.fail(f"{path.name} failed in smoke mode:\n{err}", pytrace=False)
    left = sorted(p.name for p in scratch.iterdir())
    assert not left, f"{path.name} left temporary files or folders behind: {left}"
    return nb


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs(path, tmp_path, monkeypatch):
    _run_in_smoke_mode(path, tmp_path, monkeypatch)


PROGRESS_CELL = """
import time
import numpy as np
from minicnn.callbacks import LambdaCallback
from minicnn.layers import Dense, Flatten, Input
from minicnn.models import Sequential

rng = np.random.default_rng(0)
x, y = rng.standard_normal((10, 4, 4, 1)).astype(np.float32), rng.integers(0, 3, 10)
model = Sequential([Input(shape=(4, 4, 1)), Flatten(), Dense(3, activation="softmax")])
model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
print("before fit")
slow = LambdaCallback(on_train_batch_end=lambda batch, logs: time.sleep(0.03))   # > the bar's 0.05 s interval
model.fit(x, y, epochs=3, batch_size=1, callbacks=[slow])
"""


def test_progress_bar_in_a_notebook_is_one_updated_output_per_epoch(tmp_path, monkeypatch):
    """In Jupyter the bar is one display per epoch, updated in place: no pile of ``\\r`` outputs, no colour codes.

    The bar first appears after step 1 and is redrawn every 0.05 s; the stored display shows step 10/10,
    so the later draws updated that one output instead of adding new ones.
    """
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(PROGRESS_CELL)])
    nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = nb.cells[0].outputs
    displays = [out.data["text/plain"] for out in outputs if out.output_type == "display_data"]
    streams = "".join(out.text for out in outputs if out.output_type == "stream")
    assert streams == "before fit\n", streams
    assert len(displays) == 3, outputs
    for epoch, text in enumerate(displays, start=1):
        header, line = text.split("\n")
        assert header == f"Epoch {epoch}/3"
        assert line.startswith("10/10 " + "━" * 20) and " - loss: " in line, line
        assert "\x1b" not in text and "\r" not in text


def _learner_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_learner_copies", NOTEBOOK_DIR / "make_learner_copies.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_learner_copies_writes_a_stub_for_every_solution(tmp_path):
    tool = _learner_tool()
    assert tool.main(["--out", str(tmp_path)]) == 0
    for path in NOTEBOOKS:
        solved = json.loads(path.read_text(encoding="utf-8"))
        learner = json.loads((tmp_path / path.name).read_text(encoding="utf-8"))
        tagged = [i for i, c in enumerate(solved["cells"]) if "solution" in c["metadata"].get("tags", [])]
        stubs = [i for i, c in enumerate(learner["cells"]) if "exercise" in c["metadata"].get("tags", [])]
        assert tagged, f"{path.name}: no cell is tagged 'solution'"
        assert stubs == tagged, f"{path.name}: solution cells {tagged}, stubs {stubs}"
        for i, (a, b) in enumerate(zip(solved["cells"], learner["cells"])):
            if i in tagged:
                assert "".join(b["source"]) != "".join(a["source"])
            else:
                assert b["source"] == a["source"], f"{path.name}: cell {i} changed but is no solution"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_every_exercise_check_fails_on_its_stub(path, tmp_path, monkeypatch):
    """The learner copy runs top to bottom (errors allowed); each stub runs, and the check after it fails.

    The failure must come from the check's own test (an assertion, a comparison, NotImplementedError
    from the stub), not from a name the stub forgot to define. The solved notebook passing the same
    checks is ``test_notebook_runs``.
    """
    work = tmp_path / "run"
    work.mkdir()
    assert _learner_tool().main(["--out", str(work), str(path)]) == 0
    nb = _run_in_smoke_mode(work / path.name, tmp_path, monkeypatch, allow_errors=True)
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = {i: next((o for o in c.outputs if o.output_type == "error"), None) for i, c in enumerate(code)}
    stubs = [i for i, c in enumerate(code) if "exercise" in c.metadata.get("tags", [])]
    before = [i for i in range(stubs[0]) if errors[i]]
    assert not before, f"{path.name}: cells before the exercises failed: {[errors[i].ename for i in before]}"
    for i in stubs:
        assert errors[i] is None, f"{path.name}: the stub itself fails: {errors[i].ename}: {errors[i].evalue}"
        check = errors[i + 1]
        assert check is not None, f"{path.name}: the check after stub cell {i} passes on the stub:\n{code[i].source}"
        assert check.ename not in ("NameError", "SyntaxError"), (
            f"{path.name}: the check after stub {i} fails for the wrong reason: {check.ename}: {check.evalue}")


def test_readme_lists_every_notebook_in_order():
    readme = (NOTEBOOK_DIR.parent / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Notebooks"):]
    section = section[:section.index("\n## ", 1)]
    listed = [line.split("](notebooks/")[1].split(")")[0] for line in section.splitlines() if "](notebooks/" in line]
    assert listed == [p.name for p in NOTEBOOKS], listed
    assert "python notebooks/make_learner_copies.py" in section and "jupyter lab notebooks/" in section

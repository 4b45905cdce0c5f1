"""Learner copies of the notebooks: every cell tagged ``solution`` replaced by a stub to fill in.

Usage (from the repository root)::

    python notebooks/make_learner_copies.py                  # all notebooks -> learner/
    python notebooks/make_learner_copies.py --out DIR notebooks/03_optimizers.ipynb

The copies keep every other cell, so each exercise's check cell still follows its stub: run it,
watch it fail, write the solution, run it again. A stub keeps what the check needs to *name* and
nothing it needs to *pass*:

- a function keeps its decorators, signature and docstring; its body becomes
  ``raise NotImplementedError``;
- a name the solution assigns and a later cell reads (``answer_1``) becomes ``answer_1 = None``;
  helper variables that no later cell reads are dropped;
- everything else (loops, imports, intermediate steps) is dropped.

``tests/notebooks/test_notebooks.py`` runs the copies and checks that every exercise's check fails on its
stub, while the solved notebooks pass.
"""

import argparse
import ast
import copy
import json
import sys
from pathlib import Path

TAG = "solution"
NOTEBOOK_DIR = Path(__file__).resolve().parent
HEADER = "# Exercise: replace this stub with your solution, then run the check in the next cell.\n"


def _source(cell):
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _loaded_names(sources):
    """The names that some of ``sources`` (Python code) read."""
    names = set()
    for src in sources:
        try:
            tree = ast.parse(src)
        except SyntaxError:          # an IPython magic or shell line: it reads no exercise answer
            continue
        names |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
    return names


def _assigned_names(statement):
    targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
    return [node.id for target in targets for node in ast.walk(target) if isinstance(node, ast.Name)]


def stub(source, later_sources=()):
    """The stub of one solution cell's ``source``; ``later_sources`` are the code cells after it.

    >>> print(stub("def f(x):\\n    '''Twice x.'''\\n    return 2 * x\\nanswer = f(3)\\nhelper = 1", ["print(answer)"]), end="")
    # Exercise: replace this stub with your solution, then run the check in the next cell.
    def f(x):
        '''Twice x.'''
        raise NotImplementedError('your code here')
    answer = None
    """
    tree = ast.parse(source)
    read_later = _loaded_names(later_sources)
    lines = source.splitlines()
    out = [HEADER.rstrip("\n")]
    assigned = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
            body_start = node.body[0]
            has_doc = isinstance(body_start, ast.Expr) and isinstance(getattr(body_start, "value", None), ast.Constant) \
                and isinstance(body_start.value.value, str)
            keep_to = body_start.end_lineno if has_doc else node.body[0].lineno - 1
            out.extend(lines[first - 1:keep_to])
            indent = " " * (body_start.col_offset)
            out.append(f"{indent}raise NotImplementedError('your code here')")
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            assigned.extend(name for name in _assigned_names(node) if name not in assigned)
    kept = [name for name in assigned if name in read_later] or assigned
    out.extend(f"{name} = None" for name in kept)
    return "\n".join(out) + "\n"


def learner_copy(nb):
    """A copy of notebook ``nb`` (a dict in nbformat 4) with every ``solution`` cell stubbed."""
    nb = copy.deepcopy(nb)
    cells = nb["cells"]
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "code" and TAG in cell.get("metadata", {}).get("tags", []):
            later = [_source(c) for c in cells[i + 1:] if c["cell_type"] == "code"]
            cell["source"] = stub(_source(cell), later)
            cell["metadata"]["tags"] = [t for t in cell["metadata"]["tags"] if t != TAG] + ["exercise"]
            cell["outputs"], cell["execution_count"] = [], None
    return nb


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write learner copies of the notebooks, solutions replaced by stubs.")
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to copy (default: notebooks/NN_*.ipynb)")
    parser.add_argument("--out", type=Path, default=Path("learner"), help="folder for the copies (default: learner/)")
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        print(f"make_learner_copies: no notebooks found in {NOTEBOOK_DIR}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        try:
            nb = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            print(f"make_learner_copies: cannot read {path}: {err}", file=sys.stderr)
            return 1
        copy_nb = learner_copy(nb)
        count = sum("exercise" in c.get("metadata", {}).get("tags", []) for c in copy_nb["cells"])
        (args.out / path.name).write_text(json.dumps(copy_nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{args.out / path.name}: {count} exercise(s) to solve")
    return 0


if __name__ == "__main__":
    sys.exit(main())

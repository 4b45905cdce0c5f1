#!/usr/bin/env python3
"""Print the oldest versions ``pyproject.toml`` allows, as pip pins: the runtime dependencies and the
test runners (pytest, hypothesis). ``.ci/run`` installs them in a venv of their own and runs the
kernel and layer tests there, so a floor that no longer works is noticed.

A floor ``>=X.Y`` becomes ``==X.Y`` (PEP 440 pads it: X.Y.0), the oldest version it allows. (Checked
on CI's Python 3.11; NumPy 1.24 has no wheels for Python 3.12, where pip picks newer versions anyway.)
"""

import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:   # Python 3.10: the same parser, as pip vendors it
    from pip._vendor import tomli as tomllib

TEST_RUNNERS = ("pytest", "hypothesis")


def pins(pyproject):
    project = tomllib.loads(Path(pyproject).read_text())["project"]
    wanted = list(project["dependencies"]) + [
        req for req in project["optional-dependencies"]["dev"] if re.split(r"[<>=!~ \[]", req)[0] in TEST_RUNNERS
    ]
    out = []
    for req in wanted:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)", req.strip())
        if not match:
            raise SystemExit(f"{pyproject}: cannot read a floor from {req!r} (expected 'name>=version')")
        name, version = match.groups()
        out.append(f"{name}=={version}")
    return out


if __name__ == "__main__":
    print(" ".join(pins(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "pyproject.toml")))

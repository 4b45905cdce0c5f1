"""The project's layout: the package's imports go one way (no cycle, none hidden inside a function), the
README's map of the code names files that exist, and the test modules are short, documented and uniquely
named."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "minicnn"


def module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path, modules):
    """The minicnn modules ``path`` imports, at module level or inside a function alike."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:   # minicnn.layers.Conv2D -> minicnn.layers
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                out.add(target)
    return out


def reachable(graph, start):
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_module_imports_one_that_imports_it_back():
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph = {module_name(p): imported_modules(p, modules) for p in paths}
    cycles = [m for m in sorted(graph) if m in reachable(graph, m)]
    assert cycles == [], f"modules on an import cycle: {cycles}"


def test_the_readme_map_of_the_code_names_existing_files():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("## How the code is laid out", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    names = re.findall(r"[\w/]+\.py|[\w/]+/(?=\s)", block.split("\n", 1)[1])   # below the line "minicnn/"
    assert len(names) > 10, block
    missing, folder = [], None
    for n in names:   # a bare file name may also belong to the folder named last ("kernels/numba/ ... conv.py")
        if not ((PACKAGE / n).exists() or (folder is not None and "/" not in n and (PACKAGE / folder / n).exists())):
            missing.append(n)
        if n.endswith("/"):
            folder = n
    assert missing == [], f"README names {missing}, which are not in minicnn/"


def test_test_modules_are_short_documented_and_uniquely_named():
    """pytest's default import mode puts each test folder on ``sys.path`` and imports a module by its file
    name (no ``__init__.py``, so that ``from helpers import ...`` works from every folder): two modules
    with one name in two folders would collide. Each says what it checks in its docstring."""
    tests = ROOT / "tests"
    modules = sorted(p for p in tests.rglob("*.py") if "mutation" not in p.parts)
    names = [p.name for p in modules if p.name != "conftest.py"]   # pytest imports each conftest.py by its path
    assert sorted({n for n in names if names.count(n) > 1}) == [], "test modules that share a file name"
    assert [p for p in tests.rglob("__init__.py")] == []
    long = {str(p.relative_to(tests)): n for p in modules if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert long == {}, f"test modules over 500 lines: {long}"
    undocumented = [str(p.relative_to(tests)) for p in modules if not ast.get_docstring(ast.parse(p.read_text(encoding="utf-8")))]
    assert undocumented == [], f"test modules without a docstring: {undocumented}"

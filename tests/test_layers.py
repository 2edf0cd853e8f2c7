"""The import graph runs one way and has no cycle, read from the source (nothing is imported).

Floors, lowest first: common/ -> model/, datamodules/ -> deploy/ -> engine/ -> perf/, slurm/ -> the
entry points (train.py, eval.py, predict.py, export.py). A module may import its own floor or a
lower one, except that model/ and datamodules/ do not import each other, nor do perf/ and slurm/;
deploy/ (using a trained model) never imports engine/ (training and evaluation runs). Every import
counts: module level, inside a function, under `if TYPE_CHECKING:`. And no module reaches itself
through its imports (a cycle), whatever the floors. Tests may import anything; they are not read.

The checker is a few functions over any folder, so the tests below also plant a wrong arrow and a
cycle in a throw-away tree and watch the checker report them.
"""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "model", "datamodules", "deploy", "engine", "perf", "slurm")
ENTRY_POINTS = ("train", "eval", "predict", "export")
FLOORS = {"common": 0, "model": 1, "datamodules": 1, "deploy": 2, "engine": 3, "perf": 4, "slurm": 4, "entry": 5}
SIBLINGS = ({"model", "datamodules"}, {"perf", "slurm"})


def module_files(repo: Path) -> dict[str, Path]:
    """{dotted module name: file} of every source module (entry points at the root, packages below)."""
    modules = {path.stem: path for path in repo.glob("*.py") if path.stem in ENTRY_POINTS}
    for package in PACKAGES:
        for path in sorted((repo / package).rglob("*.py")):
            parts = path.relative_to(repo).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def floor_of(module: str) -> str:
    top = module.split(".")[0]
    return "entry" if top in ENTRY_POINTS else top


def imports_of(path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(our module imported, line) for every import statement in `path`, wherever it stands.
    `from pkg import name` counts as importing `pkg.name` when that is a module, else `pkg`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                     for alias in node.names]
        else:
            continue
        for name in names:
            # `import a.b.c` names a.b.c; an unknown tail (an attribute) falls back to the module above it
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.append((name, node.lineno))
    return found


def import_graph(repo: Path) -> dict[str, list[tuple[str, int]]]:
    """{module: [(module it imports, line), ...]} over our modules."""
    modules = module_files(repo)
    return {name: imports_of(path, modules) for name, path in modules.items()}


def wrong_arrows(repo: Path) -> list[str]:
    """Imports against the floors, as `file:line: importer (floor) imports imported (floor)`."""
    modules = module_files(repo)
    wrong = []
    for importer, imported_list in import_graph(repo).items():
        for imported, line in imported_list:
            low, high = floor_of(imported), floor_of(importer)
            if low == high:
                continue
            if FLOORS[low] > FLOORS[high] or {low, high} in SIBLINGS:
                where = modules[importer].relative_to(repo)
                wrong.append(f"{where}:{line}: {importer} ({high}/) imports {imported} ({low}/)")
    return sorted(wrong)


def cycles(repo: Path) -> list[list[str]]:
    """Every strongly connected group of modules that import each other (Tarjan), each sorted;
    a module importing itself is a group of one."""
    graph = {name: sorted({target for target, _ in targets}) for name, targets in import_graph(repo).items()}
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:  # recursion depth <= number of modules (~100)
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                lowlink[node] = min(lowlink[node], lowlink[target])
            elif target in on_stack:
                lowlink[node] = min(lowlink[node], index[target])
        if lowlink[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph[node]:
                groups.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return sorted(groups)


# ---------------------------------------------------------------- the project


def test_imports_point_down_the_floors():
    wrong = wrong_arrows(REPO)
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_import_cycle():
    found = cycles(REPO)
    assert not found, "modules that import each other:\n" + "\n".join(" <-> ".join(group) for group in found)


def test_common_imports_only_common():
    wrong = [f"{importer} imports {imported}" for importer, targets in import_graph(REPO).items()
             for imported, _ in targets if floor_of(importer) == "common" and floor_of(imported) != "common"]
    assert not wrong, "\n".join(wrong)


def test_deploy_never_imports_engine():
    wrong = [f"{importer}:{line} imports {imported}" for importer, targets in import_graph(REPO).items()
             for imported, line in targets if floor_of(importer) == "deploy" and floor_of(imported) == "engine"]
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_the_project():
    # the parser must find real arrows and every package, or the tests above would pass on nothing
    floors = {floor_of(name) for name in module_files(REPO)}
    assert floors == set(FLOORS)
    found = {(floor_of(a), floor_of(b)) for a, targets in import_graph(REPO).items() for b, _ in targets}
    assert {("engine", "model"), ("engine", "datamodules"), ("engine", "deploy"), ("deploy", "model"),
            ("model", "common"), ("entry", "engine"), ("entry", "deploy"), ("slurm", "engine"),
            ("perf", "model")} <= found


# ---------------------------------------------------------------- the checker itself


def _write(repo: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = repo / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return repo


def test_checker_reports_a_deploy_to_engine_import_even_inside_a_function(tmp_path):
    repo = _write(tmp_path, {
        "engine/__init__.py": "", "engine/fit.py": "from deploy.calibrate import thresholds\n",
        "deploy/__init__.py": "", "deploy/calibrate.py": "def thresholds():\n    from engine import fit\n",
    })
    assert wrong_arrows(repo) == ["deploy/calibrate.py:2: deploy.calibrate (deploy/) imports engine.fit (engine/)"]


def test_checker_reports_cycles_of_any_length_and_type_checking_imports(tmp_path):
    repo = _write(tmp_path, {
        "model/__init__.py": "",
        "model/checkpoint.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import model.net\n",
        "model/net.py": "from model.checkpoint import save\n",
        "deploy/__init__.py": "",
        "deploy/a.py": "import deploy.b\n", "deploy/b.py": "from deploy import c\n", "deploy/c.py": "from deploy.a import x\n",
        "deploy/d.py": "import deploy.a\n",  # reaches the cycle but is not in it
        "common/__init__.py": "", "common/self.py": "import common.self\n",
    })
    assert cycles(repo) == [["common.self"], ["deploy.a", "deploy.b", "deploy.c"], ["model.checkpoint", "model.net"]]
    assert wrong_arrows(repo) == []


def test_checker_reports_sibling_and_upward_arrows(tmp_path):
    repo = _write(tmp_path, {
        "model/__init__.py": "", "model/m.py": "import datamodules.d\n",
        "datamodules/__init__.py": "", "datamodules/d.py": "",
        "common/__init__.py": "", "common/c.py": "from model import m\n",
        "slurm/__init__.py": "", "slurm/s.py": "import perf.p\n", "perf/__init__.py": "", "perf/p.py": "",
        "train.py": "import engine\n", "engine/__init__.py": "import train\n",
    })
    assert wrong_arrows(repo) == [
        "common/c.py:1: common.c (common/) imports model.m (model/)",
        "engine/__init__.py:1: engine (engine/) imports train (entry/)",
        "model/m.py:1: model.m (model/) imports datamodules.d (datamodules/)",
        "slurm/s.py:1: slurm.s (slurm/) imports perf.p (perf/)",
    ]

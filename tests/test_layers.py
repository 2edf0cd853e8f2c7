"""The import graph runs one way: entry points and perf/ -> engine/ -> model/, datamodules/ -> common/.
Parsed from the source (no imports executed); an upward or sideways arrow fails with its file and line."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# layer of each top-level package of ours; a module may import its own layer or lower ones,
# except that model/ and datamodules/ are siblings that do not import each other
LAYERS = {"common": 0, "model": 1, "datamodules": 1, "deploy": 2, "engine": 2, "perf": 3, "slurm": 3, "entry": 3}
OURS = {"common", "model", "datamodules", "deploy", "engine", "perf", "slurm", "train", "eval", "predict", "export"}
ENTRY_POINTS = {"train", "eval", "predict", "export"}


def package_of(module: str) -> str | None:
    top = module.split(".")[0]
    if top not in OURS:
        return None
    return "entry" if top in ENTRY_POINTS else top


def source_files() -> list[Path]:
    files = [p for p in REPO.glob("*.py")]
    for package in ("common", "model", "datamodules", "deploy", "engine", "perf", "slurm"):
        files += sorted((REPO / package).rglob("*.py"))
    return files


def imports_of(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
    return found


def arrows() -> list[tuple[Path, int, str, str]]:
    """(file, line, importing package, imported package) of every import between our packages."""
    found = []
    for path in source_files():
        relative = path.relative_to(REPO)
        importer = "entry" if len(relative.parts) == 1 else relative.parts[0]
        for module, line in imports_of(path):
            imported = package_of(module)
            if imported is not None:
                found.append((relative, line, importer, imported))
    return found


def test_imports_point_down_the_layers():
    wrong = []
    for path, line, importer, imported in arrows():
        sideways = {importer, imported} == {"model", "datamodules"}
        if LAYERS[imported] > LAYERS[importer] or sideways or (imported == "entry" and importer != "entry"):
            wrong.append(f"{path}:{line}: {importer} imports {imported}")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_common_imports_only_common():
    wrong = [f"{p}:{line} imports {imported}" for p, line, importer, imported in arrows()
             if importer == "common" and imported != "common"]
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_imports():
    # the parser must find real arrows, or the tests above would pass on nothing
    found = {(importer, imported) for _, _, importer, imported in arrows()}
    assert {("engine", "model"), ("engine", "datamodules"), ("model", "common"), ("entry", "engine")} <= found


def test_deploy_never_imports_engine():
    # the engine may use deploy/ (report pages), never the other way round
    wrong = [f"{p}:{line} imports engine" for p, line, importer, imported in arrows()
             if importer == "deploy" and imported == "engine"]
    assert not wrong, "\n".join(wrong)
    assert any(importer == "engine" and imported == "deploy" for _, _, importer, imported in arrows())

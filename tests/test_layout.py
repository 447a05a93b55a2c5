"""The package's import rule: imports run down the data flow, never back up (see each subpackage's
``__init__`` docstring and docs/architecture.md)."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gearfeat"

ALLOWED = {
    "_internal": set(),
    "data": {"_internal"},
    "outputs": {"_internal"},
    "features": {"data", "_internal"},
    "models": {"features", "data", "outputs", "_internal"},
    "tuning": {"models", "features", "data", "outputs", "_internal"},
    "workflows": {"workflows", "tuning", "models", "features", "data", "outputs", "_internal"},
}
"""Which subpackages (besides itself) a subpackage's modules may import."""

SHARED_WORKFLOWS = {"transfer", "fitting"}
"""Pipeline code the commands share; the other modules of ``workflows`` are commands, which import no other
command (the demo excepted: it runs the others)."""


def imported_modules(source: str, module: str, existing: set[str]) -> set[str]:
    """The gearfeat modules ``source`` (the module ``module``, e.g. ``gearfeat.data.images``) imports, relative
    imports resolved: ``from X import name`` is ``X.name`` where that is a module (in ``existing``), else ``X``."""
    package = module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module.split(".") if node.module else []
            if node.level:
                base = package[:len(package) - node.level + 1] + base
            for alias in node.names:
                name = ".".join(base + [alias.name])
                found.add(name if name in existing else ".".join(base))
    return {name for name in found if name == "gearfeat" or name.startswith("gearfeat.")}


def module_name(path: Path) -> str:
    return ".".join(("gearfeat",) + path.relative_to(PACKAGE).with_suffix("").parts)


def violations(module: str, imports: set[str]) -> list[str]:
    """The imports of ``module`` that break the rule."""
    parts = module.split(".")
    if len(parts) == 2:  # gearfeat/__init__, cli, __main__, _version: the top, which may import anything
        return [name for name in imports if module == "gearfeat._version"]
    layer, own = parts[1], parts[2]
    bad = []
    for name in sorted(imports):
        target = name.split(".")
        if len(target) < 2:
            bad.append(f"{module} imports the top-level package")
        elif name == "gearfeat._version":  # imports nothing: every module may read the version
            continue
        elif len(target) == 2 and target[1] not in ALLOWED:
            bad.append(f"{module} imports {name} (a top-level module)")
        elif target[1] != layer and target[1] not in ALLOWED[layer]:
            bad.append(f"{module} imports {name}: {layer} may not import {target[1]}")
        elif layer == "workflows" == target[1] and len(target) > 2 and target[2] != own:
            if target[2] not in SHARED_WORKFLOWS and own != "demo":
                bad.append(f"{module} imports the command module {name}")
    return bad


def package_modules() -> dict[str, str]:
    return {module_name(path): path.read_text() for path in PACKAGE.rglob("*.py")}


def existing_names(modules) -> set[str]:
    """Module and package names: ``gearfeat.data`` for ``gearfeat/data/__init__.py``."""
    return {module.removesuffix(".__init__") for module in modules}


def test_imports_run_down_the_data_flow():
    modules = package_modules()
    existing = existing_names(modules)
    assert {m.split(".")[1] for m in modules if m.count(".") == 2} == set(ALLOWED)
    found = [line for module, source in modules.items()
             for line in violations(module, imported_modules(source, module, existing))]
    assert found == []


@pytest.mark.parametrize("module, source, expected", [
    ("gearfeat.data.images", "from ..features import cache\n", ["data may not import features"]),
    ("gearfeat.features.cache", "from gearfeat.workflows.train import train\n", ["features may not import workflows"]),
    ("gearfeat.models.heads", "from .. import __version__\n", ["imports the top-level package"]),
    ("gearfeat.workflows.cnn", "from .train import train\n", ["imports the command module gearfeat.workflows.train"]),
    ("gearfeat.workflows.transfer", "from .search import search\n", ["the command module"]),
    ("gearfeat.workflows.cnn", "from .transfer import fit_and_save\n", []),
    ("gearfeat.workflows.demo", "from .train import train\n", []),
    ("gearfeat.models.stitch", "from ..features.layers import upscale\nfrom .heads import DenseHead\n", []),
    ("gearfeat.features.extractor", "from .._version import __version__\n", []),
    ("gearfeat._internal.fileio", "import gearfeat.data.images\n", ["_internal may not import data"]),
])
def test_the_rule_catches_an_import_that_runs_back_up(module, source, expected):
    existing = existing_names(package_modules())
    found = violations(module, imported_modules(source, module, existing))
    assert len(found) == len(expected) and all(e in f for e, f in zip(expected, found))

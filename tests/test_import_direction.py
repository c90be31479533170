"""Imports inside the package follow the data flow: data -> transforms -> networks / losses -> viz (maps and
plots of what the networks give) -> engines -> evaluation -> deploy, with ``dicom`` (the SEG / SR writers) usable
from transforms and deploy and ``utils`` usable from everywhere. Every import of another ``dissect_monai``
subpackage is read from the source (module level and inside functions) and checked against that order."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dissect_monai"

#: the layer of each subpackage; a module may import its own layer or a lower one, never a higher one
LAYERS = {
    "utils": 0,
    "data": 1,
    "dicom": 2,
    "transforms": 3,
    "losses": 4,
    "networks": 5,
    "viz": 6,
    "engines": 7,
    "evaluation": 8,
    "deploy": 9,
}


def imported_subpackages(source: str) -> set[str]:
    """The ``dissect_monai`` subpackages that ``source`` imports (absolute imports; relative ones stay inside)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] == "dissect_monai" and len(parts) > 1:
                names.add(parts[1])
    return names


def backward_imports(package: Path) -> list[str]:
    """One line per import that points against :data:`LAYERS` (or into a subpackage the table does not know)."""
    problems = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if len(relative.parts) < 2:
            continue  # the package's own __init__ / __main__
        own = relative.parts[0]
        if own not in LAYERS:
            problems.append(f"{relative}: subpackage '{own}' has no layer in LAYERS")
            continue
        for target in sorted(imported_subpackages(path.read_text(encoding="utf-8"))):
            if target not in LAYERS:
                problems.append(f"{relative}: imports unknown subpackage '{target}'")
            elif LAYERS[target] > LAYERS[own]:
                problems.append(f"{relative}: {own} imports {target}")
    return problems


def test_every_import_follows_the_data_flow():
    assert backward_imports(PACKAGE) == []


@pytest.mark.parametrize("layer", ["transforms", "data", "dicom", "networks"])
def test_an_import_of_deploy_below_it_is_caught(tmp_path, layer):
    """The check is not vacuous: ``import dissect_monai.deploy`` added to a lower layer is reported."""
    package = tmp_path / "dissect_monai"
    (package / layer).mkdir(parents=True)
    (package / layer / "__init__.py").write_text("")
    (package / layer / "bad.py").write_text("def f():\n    import dissect_monai.deploy\n")
    assert backward_imports(package) == [f"{layer}/bad.py: {layer} imports deploy"]

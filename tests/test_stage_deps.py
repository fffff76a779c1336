"""Every stage declares the code it runs: each misfit module its entry point imports, directly
or through other modules (function-local imports included), is a dep in dvc.yaml. A module
left out would let DVC serve a cached output that the changed code no longer makes."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    path = ROOT / "src" / Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imported_files(path: Path) -> set[Path]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("misfit"):
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("misfit")}
    return {f for f in map(module_file, names) if f is not None}


def code_of(entry: Path) -> set[str]:
    seen, todo = set(), [entry]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += imported_files(path)
    return {str(p.relative_to(ROOT)) for p in seen}


def declared_code(stage: dict) -> set[str]:
    """A stage's deps, and through data/<train|evaluate>_inputs.json those of the <kind>-inputs stage."""
    deps = set(stage["deps"])
    for kind in ("train", "evaluate"):
        if f"data/{kind}_inputs.json" in deps:
            deps |= set(STAGES[f"{kind}-inputs"]["deps"])
    return deps


@pytest.mark.parametrize("name", list(STAGES))
def test_a_stage_declares_every_module_it_imports(name):
    stage = STAGES[name].get("do", STAGES[name])
    entry = re.search(r"stages/\w+\.py", stage["cmd"]).group(0)
    declared = declared_code(stage)
    missing = sorted(path for path in code_of(ROOT / entry)
                     if not any(path == dep or path.startswith(dep.rstrip("/") + "/") for dep in declared))
    assert not missing, f"dvc.yaml stage {name!r} runs {missing} but does not list them in deps"

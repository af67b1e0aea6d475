"""The package's layering: each module imports only from its own layer or the layers below it.

Layers, bottom up (docs/architecture.md draws them): the option and error leaves; the data the
run produces; the parts (media input, sampling, speech, model backends and the DeepSeek-VL2
runtime, output files); the captioning core that drives them; the BMF glue; the two ways of
running many or endless inputs (library, live) and searching what they produced (search); the user-facing entry points.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "videocaption"
LAYERS = [
    {"errors", "options"},
    {"prompts", "result", "usage", "events", "extras"},
    {"media", "sampling", "audio", "backends", "deepseek_vl2", "outputs"},
    {"captioning"},
    {"graph"},
    {"live", "library", "search"},
    {"cli", "api", "__init__", "__main__"},
]
LAYER_OF = {unit: index for index, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    """``videocaption.captioning.summary`` -> ``captioning``; ``videocaption`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported_modules(path: Path) -> set[str]:
    """Every ``videocaption`` module a file imports, at any depth (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("videocaption"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("videocaption"))
    return found


def package_modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def test_every_unit_has_a_layer():
    units = {unit_of(module) for module in package_modules()}
    assert units - set(LAYER_OF) == set(), "a new subpackage or top-level module needs a layer here"


def test_nothing_imports_upward():
    checked = 0
    upward = []
    for module, path in package_modules().items():
        own = LAYER_OF[unit_of(module)]
        for target in imported_modules(path):
            checked += 1
            if LAYER_OF[unit_of(target)] > own:
                upward.append(f"{module} imports {target}")
    assert checked > 100, "the import scan found too few imports to be looking at the package"
    assert upward == []


def test_no_relative_imports_outside_the_model_runtime():
    """Absolute imports say where a name comes from; the runtime keeps its own relative ones."""
    relative = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
        for path in PACKAGE.rglob("*.py")
        if "deepseek_vl2" not in path.parts
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]
    assert relative == []

"""The layers of the package (docs/architecture.md) and who may import whom: every import, including those
inside functions, points down or sideways, and no two modules import each other (directly or through others)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "sake_md"

LAYERS = {  # lowest first; a module may import its own layer and those below
    "model": ["errors", "files", "console", "plotting", "units", "version", "geometry", "modules", "layer", "graph",
              "spatial", "spatial_sh", "spatial_dot", "model", "neighbours", "checkpoint", "batch", "devices",
              "allocator", "structures", "stacking"],
    "inference": ["inference", "oracles", "compile", "export", "calculator", "committee", "calibration", "data",
                  "predict", "evaluate", "shipped", "testing"],
    "md": ["md.*"],
    "training": ["objective", "train", "compile_train", "stacked", "distributed", "curves"],
    "study": ["study.*", "learn"],
    "engines": ["engines.*"],
    "cli": ["cli", "cli_options", "__main__", "__init__"],
}
# sideways or downward imports that are still refused
FORBIDDEN = {
    ("training", "inference"): {"calculator", "committee", "calibration", "export"},  # training needs no ASE
    ("inference", "inference"): set(),
    ("engines", "md"): {"md.stability", "md.segments", "md.compare", "md.early_warning"},
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(name: str) -> str:
    for layer, members in LAYERS.items():
        for m in members:
            if name == m or (m.endswith(".*") and name.split(".")[0] == m[:-2]):
                return layer
    raise AssertionError(f"sake_md.{name} is in no layer of tests/test_architecture.py: add it")


def imports(packages: bool = False) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its file. ``packages``: ``from . import x`` also
    counts as importing the package itself (its ``__init__`` runs its imports), as cycle detectors read it."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[:len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                if packages and not node.module:
                    found.add(target or "__init__")
                for alias in node.names:
                    candidate = f"{target}.{alias.name}" if target else alias.name
                    found.add(candidate if candidate in modules else target)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sake_md"):
                found.add(node.module.removeprefix("sake_md").lstrip(".") or "__init__")
        edges[name] = {m for m in found if m in modules and m != name}
    return edges


def test_every_import_points_down_or_sideways():
    order = list(LAYERS)
    wrong = []
    for name, targets in imports().items():
        for target in targets:
            a, b = layer_of(name), layer_of(target)
            if order.index(b) > order.index(a) or target in FORBIDDEN.get((a, b), set()):
                wrong.append(f"sake_md.{name} ({a}) imports sake_md.{target} ({b})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycles():
    edges = imports(packages=True)
    cycles = []
    for start in edges:
        stack, seen = [(t, [start, t]) for t in edges[start]], set()
        while stack:
            node, path = stack.pop()
            if node == start:
                cycles.append(" -> ".join(path))
                break
            if node in seen:
                continue
            seen.add(node)
            stack.extend((t, [*path, t]) for t in edges.get(node, ()))
    assert not cycles, "\n".join(cycles)


def test_engines_are_imported_by_the_command_line_and_each_other_only():
    for name, targets in imports().items():
        if layer_of(name) not in ("cli", "engines"):
            assert not {t for t in targets if t.startswith("engines")} - {name}, name

"""The package's imports: no cycle between modules, and no import inside a function to dodge one
(the command line alone imports lazily, to start fast)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
LAZY_ALLOWED = {"emsim.cli"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.AST, package: str, modules: set[str]) -> set[str]:
    """The emsim modules a syntax tree imports (``from emsim.x import y`` counts y if it is a module)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("emsim")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("emsim"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in modules else node.module)
    return {m for m in found if m in modules and m != package}


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    top, lazy = {}, {}
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        body = ast.Module(
            body=[n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))], type_ignores=[]
        )
        top[name] = imports(body, name, set(files))
        inner = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        lazy[name] = imports(ast.Module(body=inner, type_ignores=[]), name, set(files))
    return top, lazy


def test_no_import_inside_a_function():
    _, lazy = graph()
    assert {name: sorted(found) for name, found in lazy.items() if found and name not in LAZY_ALLOWED} == {}


def test_no_cycle_between_modules():
    top, _ = graph()
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for child in sorted(top[module]):
            assert state.get(child) != 1, "import cycle: " + " -> ".join([*path, module, child])
            if child not in state:
                visit(child, [*path, module])
        state[module] = 2

    for module in sorted(top):
        if module not in state:
            visit(module, [])


# Layers, bottom first: a module may import its own layer and those below, never above.
LAYERS = (
    ("emsim", "emsim.io", "emsim.progress", "emsim.study.schema", "emsim.study.settings", "emsim.study.paths"),
    (
        "emsim.extensions",
        "emsim.data",
        "emsim.readers",
        "emsim.rescale",
        "emsim.micrographs",
        "emsim.micrograph_dataset",
        "emsim.simulation",
    ),
    ("emsim.learning",),
    ("emsim.predict", "emsim.export", "emsim.montage"),
    ("emsim.study.config", "emsim.study.experiments", "emsim.match"),
    ("emsim.report", "emsim.study.findings"),
    ("emsim.cli",),
)


def layer_of(module: str) -> int:
    """The layer of the longest LAYERS prefix of ``module``."""
    matches = [
        (len(prefix), i)
        for i, layer in enumerate(LAYERS)
        for prefix in layer
        if module == prefix or module.startswith(prefix + ".")
    ]
    return max(matches)[1]


def test_imports_point_down_the_layers():
    top, _ = graph()
    upward = {
        f"{module} (layer {layer_of(module)}) -> {child} (layer {layer_of(child)})"
        for module, children in top.items()
        for child in children
        if layer_of(child) > layer_of(module)
    }
    assert sorted(upward) == []
    assert {layer_of(m) for m in top} == set(range(len(LAYERS)))  # every layer is used


if __name__ == "__main__":  # python tests/test_imports.py: the import graph, layer by layer
    top, _ = graph()
    for module in sorted(top, key=lambda m: (layer_of(m), m)):
        print(f"{layer_of(module)}  {module:34s} -> {', '.join(sorted(top[module])) or '-'}")

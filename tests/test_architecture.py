"""The package's shape, read from its source: layers, no import circles, no TensorFlow in the lower layers,
short functions (docs/architecture.md)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "keras_ipguard"

# Lowest first. A module may import modules of its own layer or below, never above.
LAYERS = (
    # Bits and records: no TensorFlow, nothing of the package above them.
    {"_version", "errors", "lookup", "settings", "atomic", "stego", "identity", "images", "registry", "vault",
     "authentication", "metrics", "architectures", "keycode", "served_marks"},
    {"backend", "batches"},
    {"data", "sources", "models", "callbacks", "autoencoder", "suspects", "base_models", "workdir"},
    {"training"},
    {"schemes"},
    {"verification", "embed_options"},
    {"attacks"},
    {"embed_report", "survival", "embedding", "savedmodel", "reporting"},
    {"serve"},
    {"paper"},
    {"__init__"},
)
TENSORFLOW = {"tensorflow", "tf_keras", "keras", "tensorflow_datasets", "tensorflow_model_optimization"}
MAX_FUNCTION_LINES = 80


def _modules():
    """{dotted name: path} of every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(name, path):
    """(imported dotted name, line) for every import in the module, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from . import data` imports the module data, `from .data import x` data
                yield (f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base), node.lineno


def _internal(name):
    """The package module an import resolves to (the longest known prefix), or None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _layer(name):
    parts = name.split(".")
    unit = parts[1] if len(parts) > 1 else "__init__"
    for index, layer in enumerate(LAYERS):
        if unit in layer:
            return index
    raise AssertionError(f"{name} is in no layer of tests/test_architecture.py: place it (docs/architecture.md)")


GRAPH = {name: sorted({_internal(target) for target, _ in _imports(name, path)} - {None, name})
         for name, path in MODULES.items()}


def test_every_module_has_a_layer():
    for name in MODULES:
        _layer(name)


def test_no_module_imports_a_higher_layer():
    wrong = [f"{name} (layer {_layer(name)}) imports {target} (layer {_layer(target)})"
             for name, targets in GRAPH.items() for target in targets if _layer(target) > _layer(name)]
    assert not wrong, "\n".join(wrong)


def test_there_are_no_import_circles():
    state, stack = {}, []

    def visit(name):
        state[name] = "open"
        stack.append(name)
        for target in GRAPH[name]:
            if state.get(target) == "open":
                circle = stack[stack.index(target):] + [target]
                # A package importing its own submodules, which import siblings, is no circle of modules.
                if not all(step == circle[0] or step.startswith(circle[0] + ".") for step in circle):
                    pytest.fail("import circle: " + " -> ".join(circle))
            elif target not in state:
                visit(target)
        stack.pop()
        state[name] = "done"

    for name in MODULES:
        if name not in state:
            visit(name)


def test_the_lower_layers_import_no_tensorflow():
    for name, path in MODULES.items():
        if _layer(name) == 0:
            heavy = [f"{target} (line {line})" for target, line in _imports(name, path)
                     if target.split(".")[0] in TENSORFLOW or _internal(target) == "keras_ipguard.backend"]
            assert not heavy, f"{name} imports {', '.join(heavy)}"


def test_no_function_is_longer_than_80_lines():
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {length} lines")
    assert not long, "\n".join(long)


def test_embed_runner_is_under_60_lines():
    tree = ast.parse(MODULES["keras_ipguard.embedding"].read_text())
    runner = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "embed")
    assert runner.end_lineno - runner.lineno + 1 < 60


def test_the_checks_catch_a_circle_and_an_upward_import(monkeypatch):
    """The checks above can fail: a lower module importing `embedding` breaks both rules."""
    monkeypatch.setitem(GRAPH, "keras_ipguard.data", GRAPH["keras_ipguard.data"] + ["keras_ipguard.embedding"])
    with pytest.raises(AssertionError, match="keras_ipguard.data .* imports keras_ipguard.embedding"):
        test_no_module_imports_a_higher_layer()
    with pytest.raises(pytest.fail.Exception, match="import circle"):
        test_there_are_no_import_circles()

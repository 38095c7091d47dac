"""The shape of helpers/: imports run one way (README, Layout) and every function reads in a sitting."""
import ast

from helpers import ROOT

# Each module may import modules of its own layer or of the layers before it, never after.
LAYERS = [
    {"__init__"},
    {"data", "diffusion", "unet", "metrics", "conditions"},
    {"viz", "device", "checkpoint", "distributed", "grains", "export", "keep"},
    {"sample"},
    {"train"},
    {"bench", "control", "notebooks", "exercises", "__main__"},
]
LAYER = {name: depth for depth, names in enumerate(LAYERS) for name in names}
# deliberately lazy: papermill takes seconds to import and only `python -m helpers tutorial` needs it
LAZY = {("__main__", "notebooks")}
MAX_FUNCTION_LINES = 60


def sibling_imports(tree: ast.Module, module: str) -> list[tuple[str, bool]]:
    """(imported sibling, whether the import sits inside a function) for every import of helpers' own modules."""
    inside = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
              for node in ast.walk(fn)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):  # import helpers.x
            for alias in node.names:
                if alias.name.startswith("helpers."):
                    name = alias.name.split(".")[1]
                    found.append((name if name in LAYER else "__init__", id(node) in inside))
        if isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or "").startswith("helpers")):
            base = (node.module or "").removeprefix("helpers").lstrip(".")
            names = [base] if base else [alias.name for alias in node.names]
            for name in names:
                name = name.split(".")[0]
                found.append((name if name in LAYER else "__init__", id(node) in inside))
    return found


def graph() -> dict[str, list[tuple[str, bool]]]:
    return {path.stem: sibling_imports(ast.parse(path.read_text()), path.stem)
            for path in sorted((ROOT / "helpers").glob("*.py"))}


def test_every_module_has_a_layer():
    assert set(graph()) == set(LAYER), "add the new module to LAYERS (and to the README's layout)"


def test_imports_run_one_way_and_none_hides_in_a_function():
    for module, imports in graph().items():
        for target, in_function in imports:
            if target == module:
                continue
            assert LAYER[target] <= LAYER[module], f"helpers/{module}.py imports {target}, a later layer"
            assert not in_function or (module, target) in LAZY, \
                f"helpers/{module}.py imports {target} inside a function (move it to the top)"


def test_there_is_no_import_cycle():
    edges = {module: {t for t, _ in imports if t != module} for module, imports in graph().items()}
    done, active = set(), []

    def visit(module: str) -> None:
        assert module not in active, f"import cycle: {' -> '.join(active[active.index(module):] + [module])}"
        if module in done:
            return
        active.append(module)
        for target in sorted(edges[module]):
            visit(target)
        active.pop()
        done.add(module)

    for module in edges:
        visit(module)


def test_the_checks_above_catch_a_cycle_and_a_hidden_import():
    """The parser sees what the tests rely on: a function-level import, and an edge back up the layers."""
    tree = ast.parse("from . import data\n\ndef f():\n    from .train import train\n    import helpers.sample\n")
    assert sorted(sibling_imports(tree, "metrics")) == [("data", False), ("sample", True), ("train", True)]
    assert LAYER["train"] > LAYER["metrics"]


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in sorted((ROOT / "helpers").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.stem}.{node.name}: {lines} lines")
    assert not long, f"split these into named steps: {long}"


def test_the_readmes_layout_is_the_real_tree():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    layout = layout[:layout.index("```", layout.index("```") + 3)]
    for path in sorted((ROOT / "helpers").glob("*.py")):
        assert path.name == "__init__.py" or f"  {path.name} " in layout, f"README's layout misses helpers/{path.name}"
    for path in sorted(p for p in (ROOT / "tools").iterdir() if p.suffix in (".py", ".sh")):
        assert path.name in layout, f"README's layout misses tools/{path.name}"
    for folder in ("notebooks", "solutions", "data", "benchmarks", "tests", "tools", "helpers"):
        assert f"\n{folder}/ " in layout, folder

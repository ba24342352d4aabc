"""The layers of rgbd_world point one way, checked statically (ast, nothing imported):

* no import cycle between modules of ``rgbd_world`` (imports inside functions count too: a
  lazy import hides a cycle, it does not remove it);
* ``rgbd_world`` uses only public ``rgbd_kernels`` names (no ``rgbd_kernels._x`` module, no
  ``_name`` imported from any rgbd_kernels module);
* the layers of README "Layout" point one way (commands -> train -> eval -> pipeline -> models
  -> data -> foundations): models and the pipeline know no trainer, data knows no model.
"""
import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "rgbd_world"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every import statement in the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            out.append((module, [a.name for a in node.names], node.lineno))
    return out


def _graph() -> dict[str, set[str]]:
    """rgbd_world module -> the rgbd_world modules it imports (``from pkg import sub`` counts
    as importing ``pkg.sub`` when ``sub`` is a module, else ``pkg``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for module, names, _ in _imports(name, path):
            if not module.startswith("rgbd_world"):
                continue
            subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules]
            graph[name].update(subs)
            if len(subs) < len(names) or not names:
                target = module
                while target not in modules and "." in target:
                    target = target.rpartition(".")[0]
                graph[name].add(target)
    for name in graph:
        graph[name].discard(name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_checker_finds_cycles_and_layer_breaks():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    assert _layer("rgbd_world.train.run_models") < _layer("rgbd_world.dit.model")
    assert _layer("rgbd_world.data.shards") > _layer("rgbd_world.tokenizer")
    assert _layer("rgbd_world") == _layer("rgbd_world.atomic")


def test_no_import_cycles_between_rgbd_world_modules():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_rgbd_world_uses_only_public_rgbd_kernels_names():
    bad = []
    for name, path in _modules().items():
        for module, names, line in _imports(name, path):
            if not module.startswith("rgbd_kernels"):
                continue
            private = [p for p in module.split(".") if p.startswith("_")] + \
                [n for n in names if n.startswith("_")]
            if private:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {module} {names}")
    assert not bad, "private rgbd_kernels names used:\n" + "\n".join(bad)


# The layers, top to bottom (README "Layout"): a module may import its own layer or lower ones.
LAYERS = [
    ("rgbd_world.cli", "rgbd_world.demo", "rgbd_world.data_commands"),
    ("rgbd_world.train",),
    ("rgbd_world.eval",),
    ("rgbd_world.pipeline", "rgbd_world.export"),
    ("rgbd_world.tokenizer", "rgbd_world.dit", "rgbd_world.flow"),
    ("rgbd_world.data",),
    ("rgbd_world.saved_model", "rgbd_world.atomic", "rgbd_world.package_data",
     "rgbd_world.validation", "rgbd_world.viz", "rgbd_world"),
]


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _layer(module: str) -> int:
    """Index in LAYERS (the most specific prefix wins: "rgbd_world" itself is the package)."""
    best = None
    for i, names in enumerate(LAYERS):
        for name in names:
            if _within(module, name) and (best is None or len(name) > len(best[1])):
                best = (i, name)
    assert best is not None and (best[1] != "rgbd_world" or module == "rgbd_world"), \
        f"{module} is in no layer: add it to LAYERS (and README Layout)"
    return best[0]


def test_layers_point_one_way():
    graph = _graph()
    up = sorted(f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
                for m, targets in graph.items() for t in targets if _layer(t) < _layer(m))
    assert not up, "imports pointing up:\n" + "\n".join(up)


def test_models_and_data_know_nothing_of_each_other():
    graph = _graph()
    models = ("rgbd_world.tokenizer", "rgbd_world.dit")
    bad = sorted(f"{m} imports {t}" for m, targets in graph.items() for t in targets
                 if (_within(m, "rgbd_world.data") and any(_within(t, x) for x in models))
                 or (any(_within(m, x) for x in models) and _within(t, "rgbd_world.data")))
    assert not bad, "\n".join(bad)

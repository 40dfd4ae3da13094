"""The package's shape: layers that point down with no import circle, light modules that stay light,
modules that are modules, settings declared once."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cartoonify"


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        out[name] = (path, ast.parse(path.read_text(encoding="utf-8")))
    return out


def _imports(name: str, path: Path, tree: ast.Module, known: set[str]) -> set[str]:
    """The package modules ``name`` imports, anywhere in it (function-level imports count too)."""
    base = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                pkg = ".".join(parts[: len(parts) - node.level + 1])
                mod = f"{pkg}.{node.module}" if node.module else pkg
            else:
                mod = node.module or ""
            candidates = [mod] + [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        for c in candidates:
            while c and c not in known:  # "cartoonify.models.generate.x" -> the module that holds x
                c = c.rpartition(".")[0]
            if c and c != name and c != "cartoonify":
                found.add(c)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {n: _imports(n, p, t, known) for n, (p, t) in mods.items() if n != "cartoonify"}


def test_no_import_circles():
    """No module imports a module that imports it back, directly or through others."""
    graph = _graph()
    cycles = []

    def visit(node, stack, done):
        for nxt in sorted(graph.get(node, ())):
            if nxt in stack:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, stack + [nxt], done)
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start], done)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


# the layers, lowest first; a module may import only from its own layer or below
LAYERS = [
    ["cartoonify.utils"],
    ["cartoonify.config"],
    ["cartoonify.runs"],
    ["cartoonify.imaging", "cartoonify.style", "cartoonify.edgemaps", "cartoonify.faces"],
    ["cartoonify.models"],
    ["cartoonify.data"],
    ["cartoonify.training", "cartoonify.train", "cartoonify.collect"],
    ["cartoonify.rating"],
    ["cartoonify.sampling"],
    ["cartoonify.evaluation"],
    ["cartoonify.comparison", "cartoonify.stylize", "cartoonify.exporting", "cartoonify.export"],
    ["cartoonify.plots"],
    ["cartoonify.notebooks"],
]


def _layer(module: str) -> int:
    for i, roots in enumerate(LAYERS):
        if any(module == r or module.startswith(r + ".") for r in roots):
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def test_layers_point_down():
    wrong = [
        f"{mod} (layer {_layer(mod)}) imports {dep} (layer {_layer(dep)})"
        for mod, deps in _graph().items()
        for dep in deps
        if _layer(dep) > _layer(mod)
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("module", ["cartoonify.config", "cartoonify.runs", "cartoonify.data.collect",
                                    "cartoonify.data.demo", "cartoonify.rating"])
def test_light_modules_do_not_import_torch(module):
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch was imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_every_module_is_importable_as_itself():
    """``import cartoonify.<module>`` gives that module, and no function of the flat API shadows it."""
    import cartoonify

    for name in _modules():
        if name == "cartoonify":
            continue
        module = importlib.import_module(name)
        assert module.__name__ == name
        parent, _, leaf = name.rpartition(".")
        assert getattr(importlib.import_module(parent), leaf) is module, f"{name} is shadowed"
    for name in cartoonify.__all__:
        if name == "__version__":
            continue
        assert not (PACKAGE / f"{name}.py").exists() and not (PACKAGE / name).is_dir(), (
            f"cartoonify.{name} is both a public name and a module"
        )
        assert getattr(cartoonify, name) is not None


def test_no_module_shares_a_name_with_a_function_of_its_package():
    clashes = []
    for name, (path, tree) in _modules().items():
        if path.name != "__init__.py":
            continue
        children = {p.stem for p in path.parent.glob("*.py")} | {p.name for p in path.parent.iterdir() if p.is_dir()}
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in children:
                clashes.append(f"{name}.{node.name}")
    assert not clashes


def test_resumable_fields_are_marked_on_the_fields():
    """Which settings may change on resume is declared on TrainConfig's fields: those that change speed,
    memory, logging, validation or how long to train, never the arithmetic of the steps."""
    from cartoonify.config import TrainConfig, resumable_changes

    marked = resumable_changes()
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert marked <= set(fields)
    for must in ("resume_from_checkpoint", "output_dir", "max_train_steps", "gradient_checkpointing",
                 "validation_prompt", "num_validation_images", "disk_check"):
        assert must in marked
    for never in ("learning_rate", "seed", "train_batch_size", "instance_dir", "pretrained_model",
                  "mixed_precision", "use_8bit_adam", "train_text_encoder", "gradient_accumulation_steps"):
        assert never not in marked
    assert all(fields[n].metadata.get("resumable") for n in marked)

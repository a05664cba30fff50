"""The package's layering, read from the import statements of its source: lower layers never
import higher ones, so each can be used (and tested) without what sits above it."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "crossmodal"


def imported_modules(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """Absolute names of the modules (and of the names imported from them) that ``path``
    imports, relative imports resolved against its place under ``root``, function-level
    imports included."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    package = parts[:-1]  # a module's package; an __init__'s own package is its folder
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def modules_under(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (PACKAGE / folder).rglob("*.py"))


def test_the_parser_resolves_relative_imports(tmp_path):
    """The rule checks below are only as good as this: imports planted in a module of a
    fake package are found, whatever their form."""
    planted = tmp_path / "crossmodal" / "models" / "planted.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("from ..checkpoint import build_model\nfrom . import net\n"
                       "def f():\n    import crossmodal.engine.trainer\n")
    assert {"crossmodal.checkpoint", "crossmodal.checkpoint.build_model",
            "crossmodal.models.net", "crossmodal.engine.trainer"} <= imported_modules(
                planted, tmp_path)
    init = tmp_path / "crossmodal" / "models" / "__init__.py"
    init.write_text("from .net import X\n")
    assert "crossmodal.models.net" in imported_modules(init, tmp_path)
    assert "crossmodal.models.encoder" in imported_modules(PACKAGE / "models" / "net.py")


@pytest.mark.parametrize("path", modules_under("models"), ids=lambda p: p.name)
def test_models_do_not_import_checkpoints(path):
    assert not {n for n in imported_modules(path) if n.startswith("crossmodal.checkpoint")}


@pytest.mark.parametrize("path", [PACKAGE / name for name in (
    "evaluate.py", "inference.py", "metrics.py", "photos.py", "landmarks.py", "onnx_export.py",
    "commands/evaluate.py", "commands/predict.py", "commands/export.py")],
    ids=lambda p: p.name)
def test_evaluation_and_prediction_do_not_import_the_training_engine(path):
    assert not {n for n in imported_modules(path) if n.startswith("crossmodal.engine")}


@pytest.mark.parametrize("path", modules_under("models", "data", "geometry", "render"),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_building_blocks_do_not_import_what_uses_them(path):
    """Models, data, geometry and rendering sit below configs, training, evaluation and
    inference."""
    above = ("crossmodal.config", "crossmodal.engine", "crossmodal.evaluate",
             "crossmodal.inference", "crossmodal.checkpoint", "crossmodal.commands",
             "crossmodal.demo", "crossmodal.photos", "crossmodal.landmarks",
             "crossmodal.onnx_export")
    assert not {n for n in imported_modules(path) if n.startswith(above)}

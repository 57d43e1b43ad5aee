"""The package's layers import one way, and no private name leaves its module.

Layers, each importing only from itself and those before it (docs: /DESIGN, "The shape"):
``errors`` -> ``io`` -> ``models`` -> ``data`` -> ``tasks`` -> ``eval`` -> ``train``, ``archive``,
``index`` -> ``pages``, ``app.py``, the CLI. Every ``.py`` file under ``medclip_core/`` and
``pages/`` and ``app.py`` is read with ``ast``: imports at any depth (inside functions and
``TYPE_CHECKING`` blocks too) count. A module file that :data:`LAYERS` does not place fails the
test, so a new module is given its layer on purpose.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("medclip_core", "pages")

# Dotted module prefix -> layer rank; the longest matching prefix wins. Modules outside a layer
# folder are placed one by one: ``medclip_core`` (the package itself) only re-exports the errors;
# ``hosting`` says whether the app is public (deployment settings, read from the environment);
# ``dicom_seg`` writes masks as DICOM SEG files, a file format like ``io``, below every task
# that saves one.
LAYERS: dict[str, int] = {
    "medclip_core": 0,
    "medclip_core.errors": 0,
    "medclip_core.hosting": 0,
    "medclip_core.io": 1,
    "medclip_core.dicom_seg": 1,
    "medclip_core.models": 2,
    "medclip_core.data": 3,
    "medclip_core.tasks": 4,
    "medclip_core.eval": 5,
    "medclip_core.train": 6,
    "medclip_core.archive": 6,
    "medclip_core.index": 6,
    "pages": 7,
    "app": 7,
    "medclip_core.__main__": 7,
}
LAYER_NAMES = {0: "errors", 1: "io", 2: "models", 3: "data", 4: "tasks", 5: "eval",
               6: "train/archive/index", 7: "pages/app/CLI"}


@dataclass(frozen=True)
class Violation:
    module: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line}: {self.message}"


def module_name(path: Path) -> str:
    """``medclip_core/tasks/zero_shot.py`` -> ``medclip_core.tasks.zero_shot`` (packages without ``__init__``)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int | None:
    """The layer of a project module, by the longest prefix in :data:`LAYERS`; None when unplaced."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYERS:
            # a module directly in the package folder must be named itself, not covered by "medclip_core"
            if prefix == "medclip_core" and len(parts) > 1 and not _is_package(parts[:2]):
                return None
            return LAYERS[prefix]
    return None


def _is_package(parts: list[str]) -> bool:
    return (ROOT.joinpath(*parts) / "__init__.py").is_file()


def is_project(module: str) -> bool:
    return module.split(".")[0] in (*PACKAGES, "app")


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def check_source(source: str, importer: str, is_package: bool = False) -> list[Violation]:
    """Layer and privacy violations of one module's source, ``importer`` being its dotted name."""
    own_layer = layer_of(importer)
    tree = ast.parse(source)
    found: list[Violation] = []
    if own_layer is None:
        return [Violation(importer, 1, "not placed in a layer: add it to LAYERS in tests/test_layers.py")]
    module_aliases: dict[str, str] = {}  # local name -> project module it stands for

    def check_target(target: str, line: int) -> None:
        target_layer = layer_of(target)
        if target_layer is None:
            found.append(Violation(importer, line, f"imports {target}, which no layer places"))
        elif target_layer > own_layer:
            found.append(Violation(importer, line, f"imports {target} ({LAYER_NAMES[target_layer]}) from the "
                                                   f"lower layer {LAYER_NAMES[own_layer]}"))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if is_project(alias.name):
                    check_target(alias.name, node.lineno)
                    if alias.asname:
                        module_aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            source_module = _absolute(node, importer, is_package)
            if not is_project(source_module):
                continue
            for alias in node.names:
                submodule = f"{source_module}.{alias.name}"
                if _is_module(submodule):  # ``from medclip_core import tasks``: the submodule is imported
                    check_target(submodule, node.lineno)
                    module_aliases[alias.asname or alias.name] = submodule
                else:
                    check_target(source_module, node.lineno)
                    if alias.name.startswith("_") and source_module != importer:
                        found.append(Violation(importer, node.lineno,
                                               f"imports the private name {alias.name} from {source_module}"))
    for node in ast.walk(tree):  # ``module._name`` through an imported project module
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in module_aliases and node.attr.startswith("_")
                and not node.attr.startswith("__") and module_aliases[node.value.id] != importer):
            found.append(Violation(importer, node.lineno, f"uses the private name "
                                                          f"{module_aliases[node.value.id]}.{node.attr}"))
    return found


def project_files() -> list[Path]:
    files = [ROOT / "app.py"]
    for package in PACKAGES:
        files += sorted((ROOT / package).rglob("*.py"))
    return files


def all_violations() -> list[Violation]:
    found = []
    for path in project_files():
        found += check_source(path.read_text(), module_name(path), path.name == "__init__.py")
    return found


def test_every_module_imports_only_its_own_or_lower_layers_and_no_private_names() -> None:
    violations = all_violations()
    assert not violations, "\n".join(map(str, violations))


@pytest.mark.parametrize(("source", "importer", "expected"), [
    ("from medclip_core.eval.metrics import roc_auc\n", "medclip_core.models.x", "imports medclip_core.eval.metrics"),
    ("def f():\n    from medclip_core.train import runs\n", "medclip_core.models.x", "imports medclip_core.train.runs"),
    ("from medclip_core import tasks\n", "medclip_core.data.x", "imports medclip_core.tasks"),
    ("import medclip_core.pages_like\n", "medclip_core.tasks.x", "which no layer places"),
    ("import pages.common\n", "medclip_core.__main__", None),
    ("from medclip_core.tasks.report import _retrieval_draft\n", "medclip_core.eval.x", "private name _retrieval_draft"),
    ("from medclip_core.data import phantom as ph\nph._boxes(None)\n", "medclip_core.tasks.x",
     "private name medclip_core.data.phantom._boxes"),
    ("from medclip_core.models.base import ClipModel\n", "medclip_core.tasks.x", None),
    ("from medclip_core.data.reports import FINDINGS\n", "medclip_core.stray", "not placed in a layer"),
])
def test_the_checker_catches_upward_imports_private_names_and_unplaced_modules(source, importer, expected) -> None:
    messages = [v.message for v in check_source(source, importer)]
    if expected is None:
        assert messages == []
    else:
        assert any(expected in m for m in messages), messages


def test_every_project_file_is_read() -> None:
    names = {module_name(p) for p in project_files()}
    assert {"app", "medclip_core.__main__", "medclip_core.tasks.retrieval", "pages.diagnose"} <= names

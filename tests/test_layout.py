"""The core stays free of Qt: imports go gui → core, never core → gui (DESIGN §2).

Two checks: a static one over every core module (catches imports hidden in functions), and a dynamic
one that imports the core with PySide6 made unimportable (catches indirect imports through other
packages).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "ipa_studio" / "core"
FORBIDDEN = ("PySide6", "shiboken6", "PyQt5", "PyQt6", "ipa_studio.gui")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# Every core module, found on disk, so a module added later is covered without editing this file.
CORE_MODULES = tuple(sorted(_module_name(p) for p in CORE.rglob("*.py")))


def _imported_names(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """Absolute names of everything ``path`` (or ``source``, as if it lived at ``path``) imports,
    relative imports resolved."""
    if source is None:
        source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.append((node.lineno, module))
            # `from ipa_studio import gui` names the package in the alias, not in the module.
            names.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names)
    return names


def _is_forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def test_core_modules_do_not_import_qt_or_gui() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: imports {name}"
        for path in sorted(CORE.rglob("*.py"))
        for line, name in _imported_names(path)
        if _is_forbidden(name)
    ]
    assert not offenders, "Qt or GUI imported from the core:\n" + "\n".join(offenders)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import PySide6.QtCore", True),
        ("from PySide6 import QtWidgets", True),
        ("from ipa_studio import gui", True),
        ("from ..gui.app import main", True),
        ("from . import images", False),
        ("import numpy", False),
    ],
)
def test_checker_recognises_forbidden_imports(source: str, expected: bool) -> None:
    # A checker that never fires would pass forever, so prove it fires, on code placed (in thought
    # only) in a core module.
    names = _imported_names(CORE / "probe.py", source)
    assert any(_is_forbidden(name) for _, name in names) is expected


def test_core_imports_with_qt_blocked() -> None:
    script = textwrap.dedent(
        f"""
        import importlib
        import importlib.abc
        import sys

        BLOCKED = {FORBIDDEN!r}

        class BlockQt(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                    raise ImportError(f"{{name}} is blocked: the core must import without Qt")
                return None

        sys.meta_path.insert(0, BlockQt())
        for module in {CORE_MODULES!r}:
            importlib.import_module(module)
        leaked = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED))
        assert not leaked, leaked
        print("core imported without Qt")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "core imported without Qt" in result.stdout

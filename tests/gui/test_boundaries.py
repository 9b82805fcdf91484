"""Architecture rules that keep the app healthy, and the install check.

* The core stays Qt-free (tests/test_layout.py checks the core's imports; this adds the new
  settings module to the run-time check).
* The GUI never imports torch itself: weights and tensors belong to the engine on its worker thread.
* ``python main.py --self-test`` works in a fresh process.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GUI = ROOT / "ipa_studio" / "gui"


def test_gui_never_imports_torch_directly() -> None:
    offenders = []
    for path in sorted(GUI.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names if n.split(".")[0] == "torch"
            ]
    assert not offenders, "the GUI must go through the core, not torch:\n" + "\n".join(offenders)


def test_settings_and_encoder_crop_import_without_qt() -> None:
    script = textwrap.dedent(
        """
        import importlib.abc, sys

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("PySide6", "shiboken6") or name.startswith("ipa_studio.gui"):
                    raise ImportError(name + " is blocked")

        sys.meta_path.insert(0, Block())
        from ipa_studio.core.settings import load_settings, save_settings
        from ipa_studio.core.images import encoder_crop
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_self_test_runs_end_to_end_in_a_fresh_process(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "QT_QPA_PLATFORM": "offscreen",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "HOME": str(tmp_path),
    }  # nothing of the real user's is touched either way
    result = subprocess.run(
        [sys.executable, "main.py", "--self-test"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "self-test passed" in result.stdout

"""Run by the *installed* environment's Python, in a child process, before an install is marked
complete: ``python -I verify_child.py DEVICE [LAUNCHER_DIR ...]``.

It imports the stack the app needs, runs one tiny tensor operation on DEVICE, and checks that none
of the launcher's own folders leaked into the library search path. It prints one JSON line; exit 0
means the environment works. Only the standard library is used before the imports it tests.
"""

import json
import os
import sys
import time


def main() -> int:
    device = sys.argv[1] if len(sys.argv) > 1 else "cpu"
    launcher_dirs = [d for d in sys.argv[2:] if d]
    report = {"ok": False, "device": device, "python": sys.version.split()[0]}
    start = time.monotonic()
    try:
        for var in ("LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH", "QT_PLUGIN_PATH", "PYTHONPATH", "PYTHONHOME"):
            for entry in os.environ.get(var, "").split(os.pathsep):
                if entry and any(
                    entry == d or entry.startswith(d.rstrip("/\\") + os.sep) for d in launcher_dirs
                ):
                    raise RuntimeError(f"the launcher's folder {entry} leaked into {var}")
        stage = "importing PyTorch"
        import torch

        stage = "importing diffusers and transformers"
        import diffusers  # noqa: F401
        import transformers  # noqa: F401

        stage = "importing Qt (PySide6)"
        from PySide6 import QtCore, QtGui, QtWidgets  # noqa: F401 (loads Qt's shared libraries)

        stage = "importing IPA Studio"
        import ipa_studio
        import ipa_studio.core.engine  # noqa: F401
        import ipa_studio.gui.main_window  # noqa: F401

        stage = f"running a test calculation on {device}"
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("PyTorch cannot use the NVIDIA GPU (torch.cuda.is_available() is False)")
        if device == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError(
                "PyTorch cannot use the Apple GPU (torch.backends.mps.is_available() is False)"
            )
        x = torch.arange(6, dtype=torch.float32, device=device).reshape(2, 3)
        value = float((x @ x.T).sum().cpu())
        if value != 83.0:
            raise RuntimeError(f"the test calculation on {device} gave {value} instead of 83")
        report.update(
            ok=True,
            torch=torch.__version__,
            app=getattr(ipa_studio, "__version__", ""),
            qt=QtCore.qVersion(),
            gpu=torch.cuda.get_device_name(0) if device == "cuda" else "",
            seconds=round(time.monotonic() - start, 1),
        )
    except BaseException as exc:  # a broken install can raise anything, even SystemExit
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["stage"] = locals().get("stage", "checking the environment")
    print(json.dumps(report), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

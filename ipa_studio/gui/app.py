"""Application entry point for the desktop window.

The real main window is still being built. Until it lands, this opens an honest placeholder that says
so and points to the command line, which already works.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

PLACEHOLDER_TEXT = (
    "<h2>IPA Studio</h2>"
    "<p>The desktop window is under construction.</p>"
    "<p>Image generation works today from the command line, for example:</p>"
    "<pre>ipa-studio generate --model MODEL_FOLDER --adapter ip-adapter_sd15.safetensors \\\n"
    "    --image-encoder IMAGE_ENCODER_FOLDER --ref cat.png:1.0 \\\n"
    '    --prompt "a cat wearing a hat" --scale 0.6 --out out.png</pre>'
    "<p>Run <code>ipa-studio --help</code> for all options; README.md explains where the model "
    "files go.</p>"
)


def main(argv: Sequence[str] | None = None) -> int:
    """Open the IPA Studio window and run the Qt event loop; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--self-test" in args:
        # The self-test (load tiny models, generate, check) needs the engine and the real window.
        print("IPA Studio: self-test not available yet", file=sys.stderr)
        return 1

    # Qt is imported here, not at module level, so `--self-test` and `--help`-style paths stay fast
    # and a missing system library is reported by Qt only when a window is really wanted.
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QApplication, QLabel, QMainWindow

    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "ipa-studio", *args])
    app.setApplicationName("IPA Studio")

    window = QMainWindow()
    window.setWindowTitle("IPA Studio")
    label = QLabel(PLACEHOLDER_TEXT)
    label.setTextFormat(Qt.TextFormat.RichText)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    label.setAlignment(Qt.AlignmentFlag.AlignCenter)
    label.setWordWrap(True)
    label.setMargin(24)
    window.setCentralWidget(label)
    window.resize(720, 420)
    window.show()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Install (with dev tools), then run the test suite and the linter.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/core -k images`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install.sh --dev

# Qt tests run without a screen (even on a desktop, so no window pops up); a test that needs a real
# window system starts Xvfb itself.
QT_QPA_PLATFORM=offscreen python3 -m pytest -q "$@"
python3 -m ruff check .

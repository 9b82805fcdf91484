"""PyInstaller's entry point for the installer (``python -m ipa_launcher`` does the same)."""

import sys

from ipa_launcher.__main__ import main

if __name__ == "__main__":
    sys.exit(main())

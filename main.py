"""Start the IPA Studio desktop app: ``python3 main.py``."""

import sys

from ipa_studio.gui.app import main

if __name__ == "__main__":
    sys.exit(main())

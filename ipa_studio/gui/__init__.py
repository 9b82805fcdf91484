"""PySide6 user interface. The only package that may import Qt; it talks to ``ipa_studio.core``."""

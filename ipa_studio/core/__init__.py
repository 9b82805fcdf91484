"""Qt-free core: adapter, models, engine. Importable without PySide6."""

"""The committed lock files agree with pyproject.toml (so a dependency change without recompiling the
locks fails here, offline), and every pin carries the registry's hashes."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib
from ipa_launcher.locks import load_index, lock_packages
from pip._vendor.packaging.markers import default_environment
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "packaging" / "locks"
INDEX = load_index(LOCKS)
COMPILED = [t for t in INDEX.targets if t.available]
PLATFORM = {"linux": "Linux", "windows": "Windows", "macos": "Darwin"}


def test_pypi_targets_are_compiled() -> None:
    # The backends PyPI serves must always have a lock; the PyTorch-index ones may be absent.
    names = {t.name for t in COMPILED}
    pypi = {t.name for t in INDEX.targets if t.torch_backend == "pypi"}
    assert pypi <= names, f"missing locks: {sorted(pypi - names)} (run packaging/locks/compile_locks.py)"
    assert {p.stem for p in LOCKS.glob("*.txt")} <= {t.name for t in INDEX.targets}, "a lock with no target"


@pytest.mark.parametrize("target", COMPILED, ids=[t.name for t in COMPILED])
def test_lock_pins_every_dependency_of_pyproject(target) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = lock_packages(target.file)
    env = default_environment() | {"platform_system": PLATFORM[target.os], "python_version": INDEX.python}
    for line in project["dependencies"]:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{target.name}: {req.name} is not in the lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{target.name}: {name}=={pins[name]} does not satisfy pyproject's {req}"
        )


@pytest.mark.parametrize("target", COMPILED, ids=[t.name for t in COMPILED])
def test_every_pin_has_hashes(target) -> None:
    text = target.file.read_text()
    blocks = [b for b in text.split("\n") if b and not b[0].isspace() and not b.startswith("#")]
    for block in blocks:
        start = text.index(block)
        following = text[start:].split("\n")[1]
        assert "--hash=sha256:" in following, f"{target.name}: {block.split()[0]} has no hash"
    assert "torch==2.14.1" in text

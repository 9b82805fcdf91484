"""Compile one lock file per target in targets.toml from the app's dependencies in pyproject.toml.

    python3 packaging/locks/compile_locks.py            # every target a reachable registry serves
    python3 packaging/locks/compile_locks.py linux-x86_64-cuda macos-arm64-mps
    python3 packaging/locks/compile_locks.py --check    # exit 1 if a committed lock is out of date

Each lock is made by ``uv pip compile`` for that target's OS, CPU and Python (``--python-platform``,
``--python-version``), with ``--generate-hashes``: every hash is the registry's own sha256 of a file
it serves, and the installer installs with ``--require-hashes``, so a damaged or swapped wheel is
refused. Targets whose ``torch_backend`` is ``pypi`` resolve against PyPI alone (or whatever index
uv is configured to use); the others ask uv's ``--torch-backend`` for the PyTorch index. When that
index cannot be reached, the target is reported as skipped and its old lock (if any) is left alone.

uv comes from the ``uv`` package (packaging/requirements.txt); ``UV`` names another binary.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def find_uv() -> str:
    if os.environ.get("UV"):
        return os.environ["UV"]
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except ImportError:
        return "uv"


def compile_target(uv: str, target: dict, python: str, out: Path) -> tuple[bool, str]:
    """Write the lock for ``target`` to ``out``; (ok, uv's messages)."""
    command = [
        uv, "pip", "compile", str(ROOT / "pyproject.toml"),
        "--python-version", python,
        "--python-platform", target["python_platform"],
        "--generate-hashes",
        "--no-header",
        "--quiet",
        "--output-file", str(out),
    ]  # fmt: skip
    if target["torch_backend"] != "pypi":
        command += ["--torch-backend", target["torch_backend"]]
    env = dict(os.environ)
    if target.get("macos_min"):
        env["MACOSX_DEPLOYMENT_TARGET"] = target["macos_min"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    return done.returncode == 0, (done.stdout + done.stderr).strip()


def header(target: dict, python: str, uv_version: str) -> str:
    source = (
        "PyPI"
        if target["torch_backend"] == "pypi"
        else f"PyPI, with PyTorch from the PyTorch index ({target['torch_backend']})"
    )
    lines = [
        f"# IPA Studio environment for {target['name']}: Python {python}, {target['python_platform']}.",
        f"# Resolved from pyproject.toml against {source}, by {uv_version}.",
        "# Made by packaging/locks/compile_locks.py; do not edit by hand.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="targets to compile (default: all)")
    parser.add_argument("--check", action="store_true", help="only check that committed locks are current")
    args = parser.parse_args(argv)

    config = tomllib.loads((HERE / "targets.toml").read_text(encoding="utf-8"))
    python = str(config["python"])
    targets = [t for t in config["target"] if not args.names or t["name"] in args.names]
    unknown = set(args.names) - {t["name"] for t in config["target"]}
    if unknown:
        print(f"unknown target(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    uv = find_uv()
    uv_version = subprocess.run([uv, "--version"], capture_output=True, text=True).stdout.strip()

    failed = stale = 0
    for target in targets:
        final = HERE / f"{target['name']}.txt"
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "lock.txt"
            ok, messages = compile_target(uv, target, python, out)
            if not ok:
                failed += 1
                kept = "the committed lock is kept" if final.exists() else "no lock for it"
                print(f"{target['name']}: skipped ({kept}): {messages.splitlines()[-1] if messages else ''}")
                continue
            text = header(target, python, uv_version) + out.read_text(encoding="utf-8")
        body = text.split("\n", 3)[3]  # the version line of uv may differ; the pins may not
        current = final.read_text(encoding="utf-8").split("\n", 3)[3] if final.exists() else None
        if args.check:
            if current != body:
                stale += 1
                print(f"{target['name']}: out of date (run compile_locks.py {target['name']})")
            else:
                print(f"{target['name']}: up to date")
            continue
        if current != body:
            final.write_text(text, encoding="utf-8")
            print(
                f"{target['name']}: written ({sum(1 for line in body.splitlines() if '==' in line)} packages)"
            )
        else:
            print(f"{target['name']}: unchanged")
    if args.check:
        return 1 if stale else 0
    return 1 if failed and len(targets) == failed else 0


if __name__ == "__main__":
    sys.exit(main())

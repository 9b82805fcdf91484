"""Make the offline bundle for one lock: every wheel it names, checked against its hashes.

    python3 packaging/make_offline_bundle.py linux-x86_64-cuda packaging/build/wheelhouse
    python3 packaging/make_offline_bundle.py windows-x86_64-cpu out/wheelhouse --python-dir DIR

The result is a folder named ``wheelhouse`` to put beside the installer (the AppImage, the unpacked
.tar.gz, the .exe or the .app); the installer then needs no network. Layout::

    wheelhouse/wheelhouse.json   which lock it serves, and that lock's sha256
    wheelhouse/wheels/*.whl      the files, downloaded with pip for the lock's OS, CPU and Python
    wheelhouse/python/           optional: a mirror of uv's Python downloads (python-build-standalone
                                 archives in <release>/<file> folders, as on its release page), so
                                 the machine needs no Python of its own; --python-dir copies one in

pip does the downloading (so it honours pip's own index settings) and, because every line of the
lock has hashes, refuses any file whose sha256 differs from the registry's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

HERE = Path(__file__).resolve().parent

# uv's --python-platform names → the platform tags pip download accepts.
PIP_PLATFORMS = {
    # pip takes the listed tags literally, so every older glibc level is named too.
    "x86_64-manylinux_2_34": [f"manylinux_2_{minor}_x86_64" for minor in range(34, 4, -1)]
    + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"],
    "x86_64-pc-windows-msvc": ["win_amd64"],
    "aarch64-apple-darwin": ["macosx_14_0_arm64"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lock", help="target name, e.g. linux-x86_64-cuda")
    parser.add_argument("out", type=Path, help="the wheelhouse folder to make")
    parser.add_argument("--python-dir", type=Path, help="a mirror of uv's Python downloads to include")
    args = parser.parse_args(argv)

    targets = {t["name"]: t for t in tomllib.loads((HERE / "locks" / "targets.toml").read_text())["target"]}
    config = tomllib.loads((HERE / "locks" / "targets.toml").read_text())
    target = targets.get(args.lock)
    lock = HERE / "locks" / f"{args.lock}.txt"
    if target is None or not lock.is_file():
        print(f"no compiled lock {lock.name}", file=sys.stderr)
        return 2
    wheels = args.out / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--require-hashes"]
    command += ["--python-version", str(config["python"]), "--implementation", "cp", "-d", str(wheels)]
    for tag in PIP_PLATFORMS[target["python_platform"]]:
        command += ["--platform", tag]
    command += ["-r", str(lock)]
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)
    if args.python_dir:
        shutil.copytree(args.python_dir, args.out / "python", dirs_exist_ok=True)
    info = {"lock": args.lock, "lock_sha256": hashlib.sha256(lock.read_bytes()).hexdigest()}
    (args.out / "wheelhouse.json").write_text(json.dumps(info, indent=2) + "\n")
    count = len(list(wheels.glob("*.whl")))
    size = sum(p.stat().st_size for p in wheels.glob("*.whl"))
    print(f"{args.out}: {count} wheels, {size / 1024**3:.2f} GB, for {args.lock}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

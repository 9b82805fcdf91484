"""``ipa-studio-installer``: the window, or ``--headless`` for scripts and the smoke test.

    ipa-studio-installer                                   the installer window
    ipa-studio-installer --headless --action install --folder DIR [--device cpu] [--wheelhouse DIR]
    ipa-studio-installer --headless --action repair|update|uninstall --folder DIR
    ipa-studio-installer --headless --action start --folder DIR   start the installed app
    ipa-studio-installer --detect                          what hardware was found, as JSON

Exit codes: 0 done, 1 failed (the message says why), 2 bad arguments, 130 cancelled.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from . import APP_NAME, LAUNCHER_VERSION, state
from .env import index_settings
from .hardware import detect
from .installer import Cancelled, InstallError, Plan, Runner, start_app
from .locks import NoLockError, load_index, recommend, select_lock
from .paths import default_install_folder
from .payload import PayloadError, find_payload, find_wheelhouse

STARTED = time.monotonic()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ipa-studio-installer", description=f"Install {APP_NAME}.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {LAUNCHER_VERSION}")
    parser.add_argument("--headless", action="store_true", help="no window: do --action and exit")
    parser.add_argument(
        "--action", choices=("install", "repair", "update", "uninstall", "start", "status"), default="install"
    )
    parser.add_argument("--folder", type=Path, help="installation folder (default: per user, see --detect)")
    parser.add_argument("--device", choices=("auto", "cuda", "mps", "cpu"), default="auto")
    parser.add_argument(
        "--wheelhouse", type=Path, help="offline bundle folder (default: one beside the installer)"
    )
    parser.add_argument("--app-wheel", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--no-shortcuts", action="store_true", help="make no desktop / Start-menu entry")
    parser.add_argument("--start", action="store_true", help="start the app when the install is done")
    for kind in ("models", "pictures", "settings"):
        parser.add_argument(
            f"--remove-{kind}", action="store_true", help=f"uninstall: delete your {kind} too"
        )
    parser.add_argument("--detect", action="store_true", help="print the hardware found and the choice made")
    parser.add_argument("--screenshots", type=Path, help=argparse.SUPPRESS)  # docs/tools drives the window
    return parser.parse_args(argv)


def install_folder(args: argparse.Namespace, system: str) -> Path:
    """--folder, else the installation this account made last (Windows' uninstaller passes none)."""
    if args.folder:
        return args.folder.expanduser().absolute()
    if args.action != "install" and state.known_installs():
        return state.known_installs()[0]
    return default_install_folder(system)


def build_plan(args: argparse.Namespace, system: str) -> Plan:
    payload = find_payload(args.app_wheel)
    index = load_index(payload.locks_dir)
    hardware = detect()
    folder = install_folder(args, system)
    record = state.read(folder)
    if args.action == "uninstall":
        remove = frozenset(k for k in ("models", "pictures", "settings") if getattr(args, f"remove_{k}"))
        return Plan("uninstall", folder, system, remove_data=remove)
    device = args.device
    if device == "auto":
        # Repair and Update keep the device the installation was made for.
        device = record.device if record and record.device else recommend(hardware, index).device
    wheelhouse = find_wheelhouse(args.wheelhouse)
    target = select_lock(index, system, hardware.machine, device)
    if wheelhouse is not None and wheelhouse.lock != target.name:
        # The offline bundle decides the build; the device only has to be one that build runs on.
        offered = [t for t in index.targets if t.name == wheelhouse.lock and t.available]
        if offered and device in offered[0].devices:
            target = offered[0]
    return Plan(
        args.action,
        folder,
        system,
        device=device,
        target=target,
        python=index.python,
        payload=payload,
        wheelhouse=wheelhouse,
        shortcuts=not args.no_shortcuts,
        index=index_settings(system=system),
    )


def headless(args: argparse.Namespace, system: str) -> int:
    if args.action in ("start", "status"):
        folder = install_folder(args, system)
        if args.action == "status":
            record = state.read(folder)
            print(
                json.dumps(
                    {
                        "folder": str(folder),
                        "status": state.status(folder),
                        **(asdict(record) if record else {}),
                    }
                )
            )
            return 0 if state.status(folder) == "complete" else 1
        try:
            proc = start_app(folder, system)
        except (InstallError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"started {APP_NAME} (pid {proc.pid})", flush=True)
        return 0
    try:
        plan = build_plan(args, system)
    except (NoLockError, PayloadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    cancel = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: cancel.set())
    signal.signal(signal.SIGTERM, lambda *_: cancel.set())
    last = [-1.0, ""]

    def progress(fraction: float, text: str) -> None:
        if int(fraction * 100) != int(last[0] * 100) or text != last[1]:
            print(f"[{fraction * 100:5.1f}%] {text}", flush=True)
            last[0], last[1] = fraction, text

    if plan.action != "uninstall":
        print(
            f"{plan.action}: {APP_NAME} into {plan.folder}, for {plan.device}, "
            f"lock {plan.target.name if plan.target else '?'}"
            + (
                f", offline from {plan.wheelhouse.root}"
                if plan.wheelhouse
                else f", packages from {plan.index.describe() if plan.index else 'PyPI'}"
            ),
            flush=True,
        )
    runner = Runner(plan, progress, lambda line: print("    " + line, flush=True), cancel)
    started = time.monotonic()
    try:
        runner.run()
    except Cancelled:
        print("cancelled: the installation is marked incomplete", file=sys.stderr)
        return 130
    except InstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{plan.action} finished in {time.monotonic() - started:.1f} s; steps: {json.dumps(runner.timings)}",
        flush=True,
    )
    if args.start and plan.action != "uninstall":
        start_app(plan.folder, system)
    return 0


def main(argv: list[str] | None = None) -> int:
    from .hardware import normalise_system

    args = parse(sys.argv[1:] if argv is None else argv)
    system = normalise_system()
    if args.detect:
        hardware = detect()
        try:
            payload = find_payload(args.app_wheel)
            rec = recommend(hardware, load_index(payload.locks_dir))
            choice = {"device": rec.device, "reason": rec.reason, "warnings": list(rec.warnings)}
        except (NoLockError, PayloadError) as exc:
            choice = {"error": str(exc)}
        print(
            json.dumps(
                {
                    "hardware": asdict(hardware),
                    "summary": hardware.summary(),
                    **choice,
                    "default_folder": str(default_install_folder(system)),
                },
                indent=2,
            )
        )
        return 0
    if args.headless:
        return headless(args, system)
    from .gui import run_window

    return run_window(args, system, STARTED)


if __name__ == "__main__":
    sys.exit(main())

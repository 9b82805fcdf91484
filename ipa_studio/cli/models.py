"""``ipa-studio models list | add | add-folder | folders | remove-folder | remove | verify | inspect |
catalog``: the model library."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("models", help="list, add, remove and verify the models in your model library")
    m.set_defaults(run=lambda args, parser: (m.print_help(), 2)[1])
    m.add_argument(
        "--library",
        type=Path,
        metavar="DIR",
        help="the models folder (default: $IPA_STUDIO_MODELS, the app's setting, or the platform's "
        "data folder)",
    )
    cmds = m.add_subparsers(dest="models_command")

    ls = cmds.add_parser("list", help="list the models, with what they are and whether they can be used")
    ls.add_argument(
        "--kind",
        choices=("base", "adapter", "image_encoder", "controlnet", "lora", "embedding", "vae"),
        help="only this kind",
    )
    ls.add_argument("--usable", action="store_true", help="only models IPA Studio can run")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(run=run_list)

    add = cmds.add_parser("add", help="add a file, a folder, a catalog name or a Hugging Face repo id")
    add.add_argument(
        "source", metavar="PATH_OR_REPO", help="path, catalog name (see 'models catalog') or owner/repo"
    )
    add.add_argument("--name", help="name in the library (default: from the file or catalog)")
    add.add_argument("--copy", action="store_true", help="copy the file into the models folder")
    add.add_argument(
        "--convert", action="store_true", help="convert a .ckpt/.bin pickle to .safetensors once, on import"
    )
    add.add_argument(
        "--no-hash", action="store_true", help="skip computing the sha256 now ('verify' does it later)"
    )
    add.add_argument("--endpoint", help="Hugging Face endpoint (default: $HF_ENDPOINT or huggingface.co)")
    add.set_defaults(run=run_add)

    af = cmds.add_parser(
        "add-folder",
        help="list the models of an existing folder where they are: a ComfyUI, A1111 / Forge or InvokeAI "
        "install, the Hugging Face cache, or any folder (nothing is copied; refreshed by 'list')",
    )
    af.add_argument("path", type=Path)
    af.set_defaults(run=run_add_folder)
    fl = cmds.add_parser("folders", help="the folders the library looks in")
    fl.set_defaults(run=run_folders)
    rf = cmds.add_parser("remove-folder", help="stop looking in a folder (its files are not touched)")
    rf.add_argument("path", type=Path)
    rf.set_defaults(run=run_remove_folder)

    rm = cmds.add_parser("remove", help="take a model out of the library")
    rm.add_argument("name")
    group = rm.add_mutually_exclusive_group()
    group.add_argument(
        "--delete-files",
        action="store_true",
        default=None,
        help="also delete its files (refused for files outside the models folder, which are never deleted)",
    )
    group.add_argument(
        "--keep-files",
        dest="delete_files",
        action="store_false",
        help="never delete its files (default for files outside the models folder)",
    )
    rm.set_defaults(run=run_remove)

    ver = cmds.add_parser("verify", help="check the files are still there, unchanged and readable")
    ver.add_argument("names", nargs="*", help="only these models (default: all)")
    ver.set_defaults(run=run_verify)

    ins = cmds.add_parser("inspect", help="say what a file or folder is, without adding it")
    ins.add_argument("path", type=Path)
    ins.add_argument("--json", action="store_true")
    ins.set_defaults(run=run_inspect)

    cat = cmds.add_parser("catalog", help="the known downloads ('models add NAME' fetches one)")
    cat.set_defaults(run=run_catalog)


def _library(args: argparse.Namespace) -> Any:
    from ipa_studio.core.models.library import ModelLibrary

    root = args.library or os.environ.get("IPA_STUDIO_MODELS")
    if root is None:
        from ipa_studio.core.settings import load_settings

        root = load_settings().models_path
    return ModelLibrary(root)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


class _Bar:
    """A tqdm bar on stderr fed by (done, total) callbacks; silent when stderr is not a terminal."""

    def __init__(self, label: str) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=0, unit="B", unit_scale=True, desc=label, file=sys.stderr, disable=None)

    def __call__(self, done: int, total: int) -> None:
        if self._bar.total != total:
            self._bar.total = total
        self._bar.n = done
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


def run_list(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    lib = _library(args)
    lib.refresh(hash_new=False)
    entries = lib.entries(args.kind, usable_only=args.usable)
    if args.json:
        print(json.dumps([e.to_json() for e in entries], indent=2))
        return 0
    if not entries:
        print(f"No models in {lib.root} yet. Add one with 'ipa-studio models add PATH_OR_REPO'.")
        return 0
    width = max(len(e.name) for e in entries)
    for e in entries:
        status = "ok" if e.usable else f"NOT USABLE: {e.reason}"
        print(f"{e.name:<{width}}  {e.kind:<13} {e.architecture:<30} {_size(e.size_bytes):>9}  {status}")
    return 0


def run_add(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    lib = _library(args)
    bar = _Bar(f"adding {args.source}")
    try:
        entry = lib.add(
            args.source,
            name=args.name,
            copy=args.copy,
            convert=args.convert,
            hash_files=not args.no_hash,
            on_progress=bar,
            endpoint=args.endpoint,
        )
    except KeyboardInterrupt:
        bar.close()
        print("\ninterrupted: run the same command again to resume the download", file=sys.stderr)
        return 130
    bar.close()
    print(f"added '{entry.name}': {entry.architecture} ({entry.kind}) at {entry.path}")
    if not entry.usable:
        print(f"note: IPA Studio cannot use it: {entry.reason}", file=sys.stderr)
    return 0


def _kinds(entries: list[Any]) -> str:
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.kind] = counts.get(e.kind, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"


def run_add_folder(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ipa_studio.core.models.scan import recognise

    lib = _library(args)
    install = recognise(args.path.expanduser())
    found = lib.add_folder(args.path)
    usable = [e for e in found if e.usable]
    what = "folder" if install.name == "folder" else f"{install.name} folder"
    print(f"{what} {install.root}: {len(found)} models ({_kinds(found)}), {len(usable)} usable by IPA Studio")
    return 0


def run_folders(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ipa_studio.core.models.scan import recognise

    lib = _library(args)
    for i, folder in enumerate(lib.folders()):
        install = recognise(folder)
        label = "models folder" if i == 0 else install.name
        print(f"{folder}  ({label}{'' if folder.is_dir() else ', missing'})")
    return 0


def run_remove_folder(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _library(args).remove_folder(args.path)
    print(f"no longer looking in {args.path.expanduser().resolve()} (its files are untouched)")
    return 0


def run_remove(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    entry = _library(args).remove(args.name, delete_files=args.delete_files)
    deleted = not entry.path.exists()
    print(
        f"removed '{entry.name}'"
        + (f" and deleted {entry.path}" if deleted else f" (files kept at {entry.path})")
    )
    return 0


def run_verify(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    lib = _library(args)
    bar = _Bar("verifying")
    try:
        results = lib.verify(args.names or None, on_progress=bar)
    finally:
        bar.close()
    bad = 0
    for r in results:
        if r.ok:
            print(f"ok      {r.name}")
        else:
            bad += 1
            print(f"PROBLEM {r.name}: {'; '.join(r.problems)}")
    return 1 if bad else 0


def run_inspect(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ipa_studio.core.models.detect import detect

    found = detect(args.path)
    if args.json:
        data = {
            k: getattr(found, k) for k in ("kind", "architecture", "usable", "reason", "format", "size_bytes")
        }
        print(json.dumps({"path": str(found.path), **data, "details": dict(found.details)}, indent=2))
    else:
        print(found.summary())
        for key, value in found.details.items():
            print(f"  {key}: {value}")
    return 0 if found.usable else 1


def run_catalog(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from ipa_studio.core.models.catalog import CATALOG

    lib = _library(args)
    have = {e.source.ref for e in lib.entries() if e.source.type == "catalog"}
    for c in CATALOG:
        size = ("~" if c.size_approximate else "") + _size(c.size_bytes)
        mark = "installed" if c.name in have else ""
        print(f"{c.name:<28} {c.kind:<13} {size:>10}  {c.repo_id:<45} {mark}")
        print(f"    {c.description}")
    return 0

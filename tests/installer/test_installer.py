"""The install sequence end to end with a stand-in for uv (the real one is exercised by
packaging/linux/smoke_test.sh): what is written, in which order, what a failure leaves behind."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
from ipa_launcher import state
from ipa_launcher.installer import InstallError, Plan, Runner, explain_uv_failure, user_data_folders
from ipa_launcher.locks import load_index
from ipa_launcher.payload import Payload, Wheelhouse

ROOT = Path(__file__).resolve().parents[2]

FAKE_UV = f"""#!{sys.executable}
# Stands in for uv: records its arguments and does the least a real uv would.
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
with open(os.environ["FAKE_UV_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
mode = os.environ.get("FAKE_UV_MODE", "ok")
if args[:2] == ["python", "install"]:
    print("error: no network"); sys.exit(1)
if args[:2] == ["python", "find"]:
    if "--managed-python" in args: sys.exit(2)
    print(sys.executable); sys.exit(0)
if args[0] == "venv":
    env = Path(args[-1]); (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").symlink_to(args[args.index("--python") + 1])
    sys.exit(0)
if args[:2] == ["pip", "sync"]:
    if mode == "disk-full":
        print("error: Failed to install: torch-2.14.1-cp311-cp311-manylinux_2_28_x86_64.whl (torch==2.14.1)")
        print("  Caused by: failed to write to file: No space left on device (os error 28)"); sys.exit(2)
    if mode == "hash":
        print("error: Failed to read `pillow==13.0.0`")
        print("  Caused by: Hash mismatch for `pillow==13.0.0`"); sys.exit(2)
    if mode == "missing":
        print("  x No solution found when resolving dependencies:")
        print("  `-> Because safetensors was not found in the provided package locations and you require")
        print("      safetensors==0.8.0, we can conclude that your requirements are unsatisfiable.")
        sys.exit(1)
    (Path(args[args.index("--python") + 1]).parent / "installed.txt").write_text("ok")
    sys.exit(0)
print("unexpected", args); sys.exit(3)
"""


@pytest.fixture
def setup(tmp_path: Path, monkeypatch):
    uv = tmp_path / "uv"
    uv.write_text(FAKE_UV)
    uv.chmod(0o755)
    log = tmp_path / "uv.log"
    monkeypatch.setenv("FAKE_UV_LOG", str(log))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "home" / "share"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / "config"))
    wheel = tmp_path / "ipa_studio-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"stand-in wheel")
    payload = Payload(ROOT / "packaging" / "locks", uv, wheel, ROOT / "resources" / "icons")
    target = next(t for t in load_index(payload.locks_dir).targets if t.name == "linux-x86_64-cuda")
    target = dataclasses.replace(target, installed_gb=0.001)  # the stand-in installs nothing big

    def plan(action: str = "install", **kw) -> Plan:
        return Plan(
            action, tmp_path / "IPAStudio", "linux", device="cpu", target=target, payload=payload, **kw
        )

    def calls() -> list[list[str]]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return plan, calls, tmp_path


@pytest.fixture
def quick_verify(tmp_path: Path, monkeypatch) -> None:
    """The real child-process check imports torch, diffusers and Qt (~15 s); tests about what
    happens around it (repair, uninstall) use one that answers like it at once. The real check is
    run by test_install_verifies_then_marks_complete_and_makes_shortcuts."""
    script = tmp_path / "verify_stub.py"
    script.write_text('import json, sys\nprint(json.dumps({"ok": True, "device": sys.argv[1]}))\n')
    monkeypatch.setattr(Runner, "verify_script", script)


def desktop_entry(tmp_path: Path) -> Path:
    return tmp_path / "home" / "share" / "applications" / "io.github.ipa_studio.IPAStudio.desktop"


def test_install_verifies_then_marks_complete_and_makes_shortcuts(setup) -> None:
    plan, calls, tmp_path = setup
    steps: list[str] = []
    runner = Runner(plan(), on_progress=lambda f, s: steps.append(s))
    record = runner.run()
    folder = tmp_path / "IPAStudio"
    assert record is not None and state.status(folder) == "complete"
    sync = next(c for c in calls() if c[:2] == ["pip", "sync"])
    assert "--require-hashes" in sync
    requirements = (folder / "requirements.lock.txt").read_text()
    assert "torch==2.14.1" in requirements and "ipa-studio @ file://" in requirements
    assert "--hash=sha256:" in requirements.split("ipa-studio @")[1]
    entry = desktop_entry(tmp_path).read_text()
    assert f"Exec={folder}/ipa-studio %F" in entry and "Icon=io.github.ipa_studio.IPAStudio" in entry
    assert (tmp_path / "home/share/icons/hicolor/256x256/apps/io.github.ipa_studio.IPAStudio.png").is_file()
    assert "Checking that IPA Studio works on the CPU" in steps  # the child-process check ran
    assert runner.timings["verify"] > 0


@pytest.mark.parametrize(
    "mode, words",
    [
        ("disk-full", "is full"),
        ("hash", "pillow==13.0.0 in the offline bundle is damaged"),
        ("missing", "The offline bundle is incomplete: safetensors 0.8.0 is missing"),
    ],
)
def test_failures_leave_an_incomplete_install_and_say_why(setup, monkeypatch, mode: str, words: str) -> None:
    plan, calls, tmp_path = setup
    monkeypatch.setenv("FAKE_UV_MODE", mode)
    house = tmp_path / "wheelhouse"
    (house / "wheels").mkdir(parents=True)
    runner = Runner(plan(wheelhouse=Wheelhouse(house, "linux-x86_64-cuda", "")))
    with pytest.raises(InstallError, match=words):
        runner.run()
    folder = tmp_path / "IPAStudio"
    assert state.status(folder) == "incomplete"
    assert words.split()[0] in state.read(folder).error
    assert not desktop_entry(tmp_path).exists()
    sync = next(c for c in calls() if c[:2] == ["pip", "sync"])
    assert {"--offline", "--no-index"} <= set(sync) and str(house / "wheels") in sync
    # The start script is only written once an install is complete.
    assert not (folder / "ipa-studio").exists()


def test_wheelhouse_for_another_lock_is_refused_before_anything_is_written(setup) -> None:
    plan, calls, tmp_path = setup
    with pytest.raises(InstallError, match="made for windows-x86_64-cpu"):
        Runner(plan(wheelhouse=Wheelhouse(tmp_path, "windows-x86_64-cpu", ""))).run()
    assert calls() == [] and state.status(tmp_path / "IPAStudio") == "absent"


def test_repair_removes_shortcuts_first_and_uninstall_keeps_the_data(setup, quick_verify) -> None:
    plan, calls, tmp_path = setup
    Runner(plan()).run()
    folder = tmp_path / "IPAStudio"
    config = tmp_path / "home" / "config" / "IPA Studio"
    config.mkdir(parents=True, exist_ok=True)
    models, pictures = tmp_path / "my models", tmp_path / "my pictures"
    for d in (models, pictures):
        d.mkdir()
        (d / "keep.bin").write_bytes(b"1")
    (config / "settings.json").write_text(
        json.dumps({"models_dir": str(models), "outputs_dir": str(pictures)})
    )
    assert user_data_folders()["models"] == models

    seen: list[bool] = []
    repair = Runner(plan("repair"), on_progress=lambda f, s: seen.append(desktop_entry(tmp_path).exists()))
    repair.run()
    assert False in seen  # during the repair no shortcut pointed at the installation
    assert state.status(folder) == "complete" and desktop_entry(tmp_path).exists()

    Runner(plan("uninstall")).run()
    assert not folder.exists() and not desktop_entry(tmp_path).exists()
    assert (models / "keep.bin").exists() and (pictures / "keep.bin").exists() and config.exists()


def test_uninstall_removes_data_only_when_asked(setup, quick_verify) -> None:
    plan, calls, tmp_path = setup
    Runner(plan()).run()
    config = tmp_path / "home" / "config" / "IPA Studio"
    config.mkdir(parents=True, exist_ok=True)
    models = tmp_path / "models"
    models.mkdir()
    (config / "settings.json").write_text(json.dumps({"models_dir": str(models)}))
    Runner(plan("uninstall", remove_data=frozenset({"models"}))).run()
    assert not models.exists() and config.exists()


def test_start_script_refuses_an_incomplete_install(setup, quick_verify) -> None:
    import subprocess

    plan, calls, tmp_path = setup
    Runner(plan()).run()
    folder = tmp_path / "IPAStudio"
    state.begin(folder, state.read(folder))  # as if a repair had been interrupted
    done = subprocess.run([str(folder / "ipa-studio")], capture_output=True, text=True)
    assert done.returncode == 1 and "not completely installed" in done.stderr


def test_uv_messages_seen_in_the_smoke_test_in_plain_words(tmp_path: Path) -> None:
    # uv 0.13.9's own words, from packaging/linux/smoke_test.sh's broken bundles.
    wheel = "pillow-13.0.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"
    truncated = (
        f"error: Failed to install: {wheel}\n  Caused by: Failed to extract archive: {wheel}\n"
        "  Caused by: I/O operation failed during extraction\n  Caused by: unexpected BufError\n"
    )
    words = explain_uv_failure(truncated, offline=True, folder=tmp_path)
    assert words.startswith("The file for pillow 13.0.0 could not be unpacked (it is damaged")
    missing = (
        "  x No solution found when resolving dependencies:\n  `-> Because safetensors was not found in the "
        "provided package locations and you require safetensors==0.8.0, we can conclude that your "
        "requirements are unsatisfiable.\n"
    )
    assert "safetensors 0.8.0 is missing" in explain_uv_failure(missing, offline=True, folder=tmp_path)


def test_uv_messages_in_plain_words(tmp_path: Path) -> None:
    network = (
        "error: Request failed after 3 retries\n  Caused by: dns error: failed to lookup address information"
    )
    assert "could not be reached" in explain_uv_failure(network, offline=False, folder=tmp_path)
    windows_full = "Caused by: There is not enough space on the disk. (os error 112)"
    assert "is full" in explain_uv_failure(windows_full, offline=False, folder=tmp_path)
    other = "error: something new\n  Caused by: an odd thing"
    assert explain_uv_failure(other, offline=False, folder=tmp_path).endswith("Caused by: an odd thing")

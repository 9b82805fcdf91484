"""``ipa-studio generate`` end to end on the tiny models, and its handling of bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ipa_studio.cli import main
from ipa_studio.cli.generate import parse_reference, parse_scale
from ipa_studio.core.images import read_png_metadata
from ipa_studio.core.models.tiny import make_mask, make_reference_image
from tests.fixtures.malicious import write_malicious_pickle


@pytest.fixture()
def files(tmp_path):
    ref = tmp_path / "ref.png"
    make_reference_image(1, (90, 70)).save(ref)
    init = tmp_path / "init.png"
    make_reference_image(2, (64, 64)).save(init)
    mask = tmp_path / "mask.png"
    make_mask((64, 64), (10, 10, 40, 40)).save(mask)
    bad_mask = tmp_path / "mask_small.png"
    make_mask((48, 64), (0, 0, 8, 8)).save(bad_mask)
    return {"ref": ref, "init": init, "mask": mask, "bad_mask": bad_mask, "dir": tmp_path}


def _base_args(tiny_sd15, tiny_adapters, tiny_image_encoder, files, out):
    return [
        "generate",
        "--model", str(tiny_sd15),
        "--adapter", str(tiny_adapters[("global", "safetensors")]),
        "--image-encoder", str(tiny_image_encoder),
        "--ref", f"{files['ref']}:0.8",
        "--prompt", "a lighthouse",
        "--scale", "0.6",
        "--steps", "2",
        "--seed", "5",
        "--width", "64", "--height", "64",
        "--quiet",
        "--out", str(out),
    ]  # fmt: skip


def test_generate_writes_png_with_settings(tiny_sd15, tiny_adapters, tiny_image_encoder, files, capsys):
    out = files["dir"] / "out.png"
    assert main(_base_args(tiny_sd15, tiny_adapters, tiny_image_encoder, files, out)) == 0
    meta = read_png_metadata(out)
    doc = json.loads(meta["ipa-studio"])
    assert doc["request"]["seed"] == 5
    assert doc["request"]["scale"] == 0.6
    assert doc["request"]["references"][0]["weight"] == 0.8
    assert "a lighthouse" in meta["parameters"]


@pytest.mark.parametrize("mode", ["img2img", "inpaint", "controlnet", "dpm++", "euler-a"])
def test_generate_modes(mode, tiny_sd15, tiny_adapters, tiny_image_encoder, tiny_controlnet, files):
    out = files["dir"] / f"{mode}.png"
    args = _base_args(tiny_sd15, tiny_adapters, tiny_image_encoder, files, out)
    if mode == "img2img":
        args += ["--init", str(files["init"]), "--strength", "0.7"]
    elif mode == "inpaint":
        args += ["--init", str(files["init"]), "--mask", str(files["mask"]), "--masked-only"]
    elif mode == "controlnet":
        args += [
            "--control",
            str(files["init"]),
            "--controlnet",
            str(tiny_controlnet),
            "--control-scale",
            "0.5",
        ]
    else:
        args += ["--scheduler", mode]
    assert main(args) == 0
    assert out.exists()


@pytest.mark.parametrize(
    "change,message",
    [
        (["--ref", "MISSING"], "could not be found"),
        (["--init", "INIT", "--mask", "BADMASK"], "mask"),
        (["--adapter", "EVIL"], "unsafe"),
        (["--adapter", "SDXL"], "SDXL"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(
    change, message, tiny_sd15, tiny_adapters, tiny_image_encoder, files, tmp_path, capsys
):
    marker = tmp_path / "pwned"
    from ipa_studio.core.models.tiny import write_ip_adapter

    subst = {
        "MISSING": str(tmp_path / "nope.png"),
        "INIT": str(files["init"]),
        "BADMASK": str(files["bad_mask"]),
        "EVIL": str(write_malicious_pickle(tmp_path / "evil.bin", marker)),
    }
    if "SDXL" in change:
        subst["SDXL"] = str(
            write_ip_adapter(
                tmp_path / "sdxl.safetensors",
                variant="global",
                sd15_folder=tiny_sd15,
                image_encoder_folder=tiny_image_encoder,
                fmt="safetensors",
                cross_attention_dim=2048,
            )
        )
    out = tmp_path / "result.png"
    args = _base_args(tiny_sd15, tiny_adapters, tiny_image_encoder, files, out)
    args += [subst.get(a, a) for a in change]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()
    assert not marker.exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_reference_and_scale_parsing():
    assert parse_reference("cat.png:0.5").weight == 0.5
    assert str(parse_reference("C:\\pics\\cat.png").image) == "C:\\pics\\cat.png"
    assert parse_reference("C:\\pics\\cat.png:2").weight == 2.0
    assert parse_scale("0.3") == 0.3
    assert parse_scale("down_blocks=0,up_blocks.1=1") == {"down_blocks": 0.0, "up_blocks.1": 1.0}


def test_console_entry_point_help():
    out = subprocess.run(
        [sys.executable, "-m", "ipa_studio.cli", "generate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--ref IMAGE[:WEIGHT]" in out.stdout and "--scheduler" in out.stdout


def test_image_encoder_found_beside_adapter(tiny_sd15, tiny_adapters, tiny_image_encoder, files, monkeypatch):
    import shutil

    repo = files["dir"] / "h94" / "models"
    shutil.copytree(tiny_image_encoder, repo / "image_encoder")
    adapter = shutil.copy(tiny_adapters[("plus", "safetensors")], repo)
    out = files["dir"] / "auto.png"
    args = _base_args(tiny_sd15, tiny_adapters, tiny_image_encoder, files, out)
    i = args.index("--image-encoder")
    del args[i : i + 2]
    args[args.index("--adapter") + 1] = str(adapter)
    assert main(args) == 0
    doc = json.loads(read_png_metadata(out)["ipa-studio"])
    assert doc["request"]["models"]["image_encoder"] == str(repo / "image_encoder")

    monkeypatch.setenv("IPA_STUDIO_MODELS", str(files["dir"] / "empty-library"))
    shutil.rmtree(repo / "image_encoder")
    assert main(args) == 2

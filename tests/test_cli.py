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


# --- image-prompt controls ---------------------------------------------------------------------


def test_generate_with_every_image_prompt_control_restores_them(
    tiny_sd15, tiny_adapters, tiny_image_encoder, files, capsys
):
    from ipa_studio.core.metadata import request_from_metadata
    from ipa_studio.core.presets import find_preset
    from ipa_studio.core.references import ReferenceStore
    from ipa_studio.core.request import EncoderView, HiresSpec, NegativeImage

    negative = files["dir"] / "negative.png"
    make_reference_image(9, (64, 64)).save(negative)
    library = files["dir"] / "library"
    out = files["dir"] / "controls.png"
    args = _base_args(tiny_sd15, tiny_adapters, tiny_image_encoder, files, out)
    args += [
        "--ref", str(files["init"]),
        "--ref-window", "0.2:0.9", "--ref-window", "0:0.5",
        "--ref-mask", str(files["mask"]), "--ref-mask", "none",
        "--ref-view", "crop:10,5,60", "--ref-view", "tile",
        "--negative-image", str(negative), "--negative-noise", "0.3",
        "--preset", "Composition",
        "--hires", "1.5", "--hires-strength", "0.4", "--hires-steps", "3",
        "--library", str(library), "--save-refs",
    ]  # fmt: skip
    assert main(args) == 0
    restored = request_from_metadata(read_png_metadata(out))
    first, second = restored.references
    assert (first.start, first.end, first.mask, first.view) == (
        0.2,
        0.9,
        str(files["mask"]),
        EncoderView("crop", (10, 5, 60)),
    )
    assert (second.start, second.end, second.mask, second.view) == (0.0, 0.5, None, EncoderView("tile"))
    assert restored.negative_image == NegativeImage(str(negative), 0.3)
    assert restored.scale == find_preset("Composition").scale(0.6)
    assert restored.hires == HiresSpec(1.5, 0.4, 3, "lanczos")
    from PIL import Image

    assert Image.open(out).size == (96, 96)
    store = ReferenceStore(library)
    assert len(store.entries()) == 2 and all(e.features == 1 for e in store.entries())
    assert "saved reference" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ref-window", "0.5"], "START:END"),
        (["--ref-view", "stretch"], "not a view"),
        (["--ref-view", "pad:1,2,3"], "not a view"),
        (["--ref-mask", "a.png", "--ref-mask", "b.png"], "once per --ref"),
        (["--preset", "Style", "--scale", "down_blocks=1"], "--scale as one number"),
    ],
)
def test_image_prompt_flags_are_checked(
    extra, message, tiny_sd15, tiny_adapters, tiny_image_encoder, files, capsys
):
    out = files["dir"] / "never.png"
    with pytest.raises(SystemExit):
        main(_base_args(tiny_sd15, tiny_adapters, tiny_image_encoder, files, out) + extra)
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_unknown_preset_is_named(tiny_sd15, tiny_adapters, tiny_image_encoder, files, capsys):
    out = files["dir"] / "never.png"
    assert (
        main(_base_args(tiny_sd15, tiny_adapters, tiny_image_encoder, files, out) + ["--preset", "Nope"]) == 2
    )
    assert "No block preset is called 'Nope'" in capsys.readouterr().err


def test_presets_command_lists_saves_and_deletes(tmp_path, capsys):
    file = tmp_path / "presets.json"
    assert main(["presets", "--file", str(file)]) == 0
    listed = capsys.readouterr().out
    assert "Style (built in)" in listed and "0 0 0 0 0.25 1 0 0 0 0 0 0 0 0 0 0" in listed
    assert (
        main(["presets", "--file", str(file), "--save", "Mine", "--weights", "up_blocks.1=0.5,default=0"])
        == 0
    )
    assert main(["presets", "--file", str(file)]) == 0
    assert "Mine (yours)" in capsys.readouterr().out
    assert main(["presets", "--file", str(file), "--delete", "Mine"]) == 0
    assert main(["presets", "--file", str(file), "--delete", "Style"]) == 2

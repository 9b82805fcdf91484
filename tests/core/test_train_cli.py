"""``ipa-studio train`` end to end on the tiny models, and the bundled accelerate / DeepSpeed configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

from ipa_studio.cli import main
from ipa_studio.cli.train import CONFIG_FILES
from ipa_studio.core.adapter import read_checkpoint
from ipa_studio.core.models.tiny import make_reference_image


def test_cli_train_writes_a_loadable_adapter_and_resumes(tiny_sd15, tiny_image_encoder, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    lines = []
    for i in range(4):
        make_reference_image(40 + i, (64, 80)).save(data / f"img{i}.jpg")
        lines.append(json.dumps({"file_name": f"img{i}.jpg", "text": f"shapes {i}"}))
    (data / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    args = [
        "train",
        "--data", str(data),
        "--model", str(tiny_sd15),
        "--image-encoder", str(tiny_image_encoder),
        "--output", str(out),
        "--variant", "plus",
        "--resolution", "64",
        "--batch-size", "2",
        "--gradient-accumulation", "2",
        "--checkpoint-every", "1",
        "--keep-checkpoints", "2",
        "--num-workers", "0",
        "--device", "cpu",
        "--save-precision", "fp16",
        "--quiet",
    ]  # fmt: skip
    assert main([*args, "--max-steps", "3"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "ip-adapter.safetensors"), str(out / "ip-adapter.bin")]
    ckpt = read_checkpoint(out / "ip-adapter.bin")
    assert ckpt.variant == "plus" and ckpt.num_tokens == 16 and len(ckpt.layers) == 16
    assert ckpt.layers[0][0].dtype.is_floating_point and ckpt.layers[0][0].itemsize == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000003"]
    state = json.loads((out / "checkpoints" / "step-0000003" / "training_state.json").read_text())
    assert state["step"] == 3 and state["batches"] == 6 and state["images"] == 12  # 2 micro-batches a step

    assert main([*args, "--max-steps", "4", "--resume", "latest"]) == 0
    steps = [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_cli_train_needs_its_folders(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", "somewhere"])
    assert exc.value.code == 2
    assert "--model, --image-encoder, --output" in capsys.readouterr().err


def test_cli_trains_on_the_official_json_dataset(
    tiny_sd15, tiny_image_encoder, official_json_dataset, tmp_path, capsys
):
    """tutorial_train.py's --data_json_file / --data_root_path, as --data-json / --data-root; the
    images sit in a root folder apart from the JSON file."""
    json_file, root = official_json_dataset
    out = tmp_path / "run"
    args = [
        "train",
        "--data-json", str(json_file),
        "--data-root", str(root),
        "--model", str(tiny_sd15),
        "--image-encoder", str(tiny_image_encoder),
        "--output", str(out),
        "--resolution", "64",
        "--batch-size", "2",
        "--max-steps", "1",
        "--num-workers", "0",
        "--device", "cpu",
        "--quiet",
    ]  # fmt: skip
    assert main(args) == 0
    assert capsys.readouterr().out.split()[0] == str(out / "ip-adapter.safetensors")
    assert read_checkpoint(out / "ip-adapter.safetensors").variant == "global"
    config = json.loads((out / "train_config.json").read_text())
    assert config["data"] == str(json_file) and config["data_root"] == str(root)


def test_cli_data_root_needs_a_json_dataset(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--data", str(tmp_path), "--data-root", str(tmp_path)])
    assert "--data-root goes with a .json dataset list" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--data", str(tmp_path), "--data-json", str(tmp_path / "d.json")])
    assert "--data or --data-json, not both" in capsys.readouterr().err


def test_bundled_launch_configs(capsys):
    assert main(["train", "--show-configs"]) == 0
    paths = [Path(p) for p in capsys.readouterr().out.split()]
    assert [p.name for p in paths] == list(CONFIG_FILES) and all(p.is_file() for p in paths)
    configs = {p.name: p for p in paths}

    single = load_config_from_file(str(configs["accelerate_single_gpu.yaml"]))
    assert single.distributed_type == DistributedType.NO and single.num_processes == 1
    multi = load_config_from_file(str(configs["accelerate_multi_gpu.yaml"]))
    assert multi.distributed_type == DistributedType.MULTI_GPU

    zero2 = load_config_from_file(str(configs["accelerate_deepspeed_zero2.yaml"]))
    assert zero2.distributed_type == DistributedType.DEEPSPEED
    assert zero2.deepspeed_config["zero_stage"] == 2
    assert zero2.deepspeed_config["offload_optimizer_device"] == "none"
    # Left to `ipa-studio train`, so --gradient-accumulation is not silently overridden.
    assert "gradient_accumulation_steps" not in zero2.deepspeed_config

    ds = json.loads(configs["deepspeed_zero2.json"].read_text(encoding="utf-8"))
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["train_micro_batch_size_per_gpu"] == "auto" and ds["gradient_accumulation_steps"] == "auto"
    assert ds["gradient_clipping"] == zero2.deepspeed_config["gradient_clipping"] == 0.0

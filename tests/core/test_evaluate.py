"""CLIP-I / CLIP-T: the formulas on embeddings with known answers, the CLIP model wrapper against a
direct computation, and an evaluation run end to end on the tiny models (CSV + summary)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import CLIPModel

from ipa_studio.cli import main
from ipa_studio.core.evaluate import CSV_COLUMNS, ClipScorer, EvalConfig, clip_i, clip_t, cosine, evaluate
from ipa_studio.core.models.tiny import make_reference_image


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pairs")
    captions = {"cat.png": "a cat on a sofa", "boat.png": "a red boat at sea"}
    for seed, (name, caption) in enumerate(captions.items()):
        make_reference_image(seed + 20, (70, 56)).save(folder / name)
        (folder / name).with_suffix(".txt").write_text(caption, encoding="utf-8")
    (folder / "unreadable.png").write_bytes(b"broken")
    return folder


def test_metrics_on_hand_made_embeddings():
    reference = torch.tensor([[1.0, 0.0, 0.0]])
    generated = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 3.0, 0.0], [-2.0, 0.0, 0.0]])
    torch.testing.assert_close(clip_i(generated, reference), torch.tensor([1.0, 0.6, 0.0, -1.0]))
    # CLIPScore: 2.5 · max(cos, 0); scale of the vectors does not matter.
    text = torch.tensor([[0.0, 5.0, 0.0]])
    torch.testing.assert_close(clip_t(generated, text), torch.tensor([0.0, 2.0, 2.5, 0.0]))
    torch.testing.assert_close(clip_t(generated, text, weight=1.0), torch.tensor([0.0, 0.8, 1.0, 0.0]))

    torch.manual_seed(0)
    a, b = torch.randn(7, 16), torch.randn(7, 16)
    direct = [
        float(x @ y) / (math.sqrt(float(x @ x)) * math.sqrt(float(y @ y))) for x, y in zip(a, b, strict=True)
    ]
    torch.testing.assert_close(cosine(a, b), torch.tensor(direct))
    torch.testing.assert_close(clip_t(a, b), 2.5 * torch.tensor(direct).clamp(min=0))


def test_scorer_equals_a_direct_clip_computation(tiny_clip):
    scorer = ClipScorer(tiny_clip)
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    images = [make_reference_image(1, (50, 40)), make_reference_image(2, (32, 32))]
    texts = ["a cat on a sofa", "a red boat at sea"]
    pixels = scorer.processor(images=images, return_tensors="pt").pixel_values
    ids = scorer.tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        image_direct = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        text_direct = model.text_projection(
            model.text_model(input_ids=ids.input_ids, attention_mask=ids.attention_mask).pooler_output
        )
    torch.testing.assert_close(scorer.image_embeddings(images), image_direct)
    torch.testing.assert_close(scorer.text_embeddings(texts), text_direct)
    # The end-of-text token pools the text: different captions must give different embeddings.
    assert not torch.allclose(text_direct[0], text_direct[1])


@pytest.fixture(scope="module")
def run(pairs, tiny_clip, tiny_sd15, tiny_adapters, tiny_image_encoder, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("eval")
    config = EvalConfig(
        pairs=pairs,
        base_model=tiny_sd15,
        adapter=tiny_adapters[("global", "safetensors")],
        image_encoder=tiny_image_encoder,
        clip_model=tiny_clip,
        out=out_dir / "results.csv",
        num_images=3,
        scale=0.7,
        seed=11,
        steps=2,
        size=64,
        save_images=out_dir / "images",
        device="cpu",
    )
    return config, evaluate(config)


def test_csv_has_one_row_per_generated_image(run, tiny_clip):
    config, result = run
    with config.out.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    assert len(rows) == result.images == 2 * 3 and result.pairs == 2
    assert sorted({(r["pair"], r["seed"]) for r in rows}) == [("0", "11"), ("1", "12")]
    assert [r["image_index"] for r in rows] == ["0", "1", "2"] * 2
    assert result.skipped == [str(config.pairs / "unreadable.png")]

    # Every score is the metric of the saved image, recomputed here from the files.
    scorer = ClipScorer(tiny_clip)
    for row in rows:
        generated = scorer.image_embeddings([Image.open(row["image_file"]).convert("RGB")])
        reference = scorer.image_embeddings([Image.open(row["reference"]).convert("RGB")])
        text = scorer.text_embeddings([row["caption"]])
        assert float(row["clip_i"]) == pytest.approx(float(clip_i(generated, reference)), abs=1e-5)
        assert float(row["clip_t"]) == pytest.approx(float(clip_t(generated, text)), abs=1e-5)
        assert float(row["clip_t_cosine"]) == pytest.approx(float(cosine(generated, text)), abs=1e-5)
    assert result.clip_i == pytest.approx(sum(float(r["clip_i"]) for r in rows) / len(rows))
    assert result.clip_t == pytest.approx(sum(float(r["clip_t"]) for r in rows) / len(rows))


def test_summary_records_adapter_base_model_scale_and_seed(run):
    config, result = run
    summary = json.loads(config.out.with_suffix(".json").read_text(encoding="utf-8"))
    settings = summary["settings"]
    assert settings["adapter"] == str(config.adapter) and settings["base_model"] == str(config.base_model)
    assert settings["scale"] == 0.7 and settings["seed"] == 11 and settings["num_images"] == 3
    assert summary["clip_i"] == pytest.approx(result.clip_i) and summary["images"] == 6
    assert "CLIPScore" in summary["clip_t_definition"]
    line = result.summary_line(config)
    assert f"CLIP-I {result.clip_i:.4f}" in line and "λ=0.7" in line and "seed=11" in line
    assert summary["summary"] == line


def test_generating_the_reference_itself_scores_clip_i_one(pairs, tiny_clip, tmp_path):
    config = EvalConfig(
        pairs=pairs,
        base_model=Path("unused"),
        adapter=Path("unused"),
        image_encoder=Path("unused"),
        clip_model=tiny_clip,
        out=tmp_path / "identity.csv",
        num_images=2,
    )
    seen = []

    def identity(reference: Image.Image, prompt: str, seed: int) -> list[Image.Image]:
        seen.append((prompt, seed))
        return [reference, reference]

    result = evaluate(config, scorer=ClipScorer(tiny_clip), generate=identity)
    assert result.clip_i == pytest.approx(1.0, abs=1e-5)
    assert seen == [("", 0), ("", 1)]  # image-only prompt, as in the paper; seed + pair index


def test_cli_evaluate(pairs, tiny_clip, tiny_sd15, tiny_adapters, tiny_image_encoder, tmp_path, capsys):
    out = tmp_path / "cli.csv"
    code = main(
        [
            "evaluate",
            "--pairs", str(pairs),
            "--model", str(tiny_sd15),
            "--adapter", str(tiny_adapters[("plus", "bin")]),
            "--image-encoder", str(tiny_image_encoder),
            "--clip-model", str(tiny_clip),
            "--num-images", "1",
            "--steps", "1",
            "--size", "64",
            "--limit", "1",
            "--device", "cpu",
            "--quiet",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.startswith("CLIP-I ") and "over 1 images from 1 pairs" in printed
    assert len(out.read_text(encoding="utf-8").splitlines()) == 2

"""What the window's block map needs from the presets module: exact layer maps both ways, renaming,
and no torch on import (the map is drawn on the GUI thread)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from ipa_studio.core.errors import RequestError
from ipa_studio.core.presets import (
    BUILTIN_PRESETS,
    MAX_WEIGHT,
    SD15_LAYERS,
    BlockPreset,
    compact_weights,
    layer_weights,
    load_presets,
    rename_preset,
    save_preset,
)


def test_compact_weights_is_the_inverse_of_layer_weights() -> None:
    rng = random.Random(3)
    for preset in BUILTIN_PRESETS:
        values = layer_weights(preset.weights)
        assert layer_weights(compact_weights(values)) == values
    for _ in range(200):
        values = [rng.choice([0.0, 0.25, 0.5, 1.0, 1.5]) for _ in SD15_LAYERS]
        assert layer_weights(compact_weights(values)) == values


def test_compact_weights_names_whole_blocks_and_keeps_the_common_value_as_default() -> None:
    style = next(p for p in BUILTIN_PRESETS if p.name == "Style")
    # 11 of its 16 layers are on: those become the default, the five off are named (two as blocks).
    assert compact_weights(layer_weights(style.weights)) == {
        "down_blocks.2": 0.0,
        "mid_block": 0.0,
        "up_blocks.1.attentions.0": 0.0,
        "up_blocks.1.attentions.1": 0.0,
        "default": 1.0,
    }
    assert compact_weights([1.0] * len(SD15_LAYERS)) == {"default": 1.0}
    with pytest.raises(ValueError):
        compact_weights([1.0, 2.0])


def test_rename_keeps_weights_and_place_in_one_write(tmp_path: Path) -> None:
    path = tmp_path / "block_presets.json"
    save_preset(BlockPreset("A", {"up_blocks.1": 1.0, "default": 0.0}, "first"), path)
    save_preset(BlockPreset("B", {"mid_block": 0.5, "default": 0.0}), path)
    renamed = rename_preset("A", "Faces", path)
    assert renamed == BlockPreset("Faces", {"up_blocks.1": 1.0, "default": 0.0}, "first")
    user = [p for p in load_presets(path) if not p.builtin]
    assert [p.name for p in user] == ["Faces", "B"]
    assert json.loads(path.read_text())["presets"][0]["name"] == "Faces"
    for old, new, words in (
        ("Style", "Mine", "built-in"),
        ("B", "Style", "built-in"),
        ("B", "Faces", "already"),
        ("Nope", "X", "no saved preset"),
        ("B", "  ", "needs a name"),
    ):
        with pytest.raises(RequestError, match=words):
            rename_preset(old, new, path)
    assert [p.name for p in load_presets(path) if not p.builtin] == ["Faces", "B"]


def test_presets_module_imports_without_torch_and_shares_the_engines_bound() -> None:
    code = "import sys, ipa_studio.core.presets as p; p.match_preset(0.5); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    from ipa_studio.core.adapter.adapter import resolve_scale as used_by_the_adapter
    from ipa_studio.core.prepare import MAX_SCALE
    from ipa_studio.core.presets import resolve_scale

    assert MAX_WEIGHT == MAX_SCALE
    assert used_by_the_adapter is resolve_scale

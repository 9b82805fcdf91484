"""The adapter modules and the official checkpoint format."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel

from ipa_studio.core.adapter import (
    AdapterContext,
    IPAdapter,
    cross_attention_layers,
    install_adapter,
    parse_checkpoint,
    read_checkpoint,
    reference_bias,
)
from ipa_studio.core.adapter.adapter import resolve_scale
from ipa_studio.core.errors import AdapterMismatchError, ModelFileError, UnsafeFileError
from ipa_studio.core.models.safe_load import load_weights
from tests.fixtures.malicious import write_legacy_malicious_pickle, write_malicious_pickle


@pytest.mark.parametrize("variant", ["global", "plus", "full"])
def test_bin_and_safetensors_load_identical_weights(variant, tiny_adapters):
    a = IPAdapter(read_checkpoint(tiny_adapters[(variant, "bin")]))
    b = IPAdapter(read_checkpoint(tiny_adapters[(variant, "safetensors")]))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and len(sa) > 0
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("variant,tokens", [("global", 4), ("plus", 16), ("full", None)])
def test_detects_variant_and_shapes(variant, tokens, tiny_adapters):
    ckpt = read_checkpoint(tiny_adapters[(variant, "safetensors")])
    assert ckpt.variant == variant
    assert ckpt.num_tokens == tokens
    assert len(ckpt.layers) == 16  # one per cross-attention layer of an SD1.5-shaped UNet
    assert ckpt.cross_attention_dim == 32


@pytest.mark.parametrize("suffix", ["bin", "safetensors"])
@pytest.mark.parametrize("variant", ["global", "plus"])
def test_save_round_trips_in_official_layout(variant, suffix, tiny_adapters, tmp_path):
    adapter = IPAdapter(read_checkpoint(tiny_adapters[(variant, "bin")]))
    out = adapter.save(tmp_path / f"saved.{suffix}")
    raw = load_weights(out)
    if suffix == "bin":
        assert set(raw) == {"image_proj", "ip_adapter"}
        assert "1.to_k_ip.weight" in raw["ip_adapter"] and "31.to_v_ip.weight" in raw["ip_adapter"]
    else:
        assert "ip_adapter.1.to_k_ip.weight" in raw and any(k.startswith("image_proj.") for k in raw)
    again = IPAdapter(read_checkpoint(out))
    for key, value in adapter.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])
    assert not list(tmp_path.glob("*.tmp"))


def test_install_remove_restores_plain_unet(tiny_sd15, tiny_adapters):
    unet = UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet")
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    params_before = {k: v.clone() for k, v in unet.state_dict().items()}
    adapter = IPAdapter(read_checkpoint(tiny_adapters[("global", "safetensors")]))
    installed = install_adapter(adapter, unet, encoder_projection_dim=24, encoder_hidden_size=32, scale=0.5)
    assert len(installed.processors) == len(cross_attention_layers(unet)) == 16
    # W'k / W'v belong to the adapter, not to the UNet's state dict.
    assert unet.state_dict().keys() == params_before.keys()
    installed.remove()
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before


def test_refused_adapter_leaves_unet_untouched(tiny_sd15, tiny_adapters):
    unet = UNet2DConditionModel.from_pretrained(tiny_sd15, subfolder="unet")
    before = dict(unet.attn_processors)
    adapter = IPAdapter(read_checkpoint(tiny_adapters[("plus", "safetensors")]))
    with pytest.raises(AdapterMismatchError, match="image encoder"):
        install_adapter(adapter, unet, encoder_projection_dim=24, encoder_hidden_size=1280)
    assert dict(unet.attn_processors) == before


def test_wrong_layer_count_is_named(tiny_adapters):
    state = load_weights(tiny_adapters[("global", "bin")])
    for key in [k for k in state["ip_adapter"] if k.startswith(("29.", "31."))]:
        del state["ip_adapter"][key]
    ckpt = parse_checkpoint(state, "cut.bin")
    from ipa_studio.core.adapter import check_fits

    with pytest.raises(AdapterMismatchError, match="14 layers.*16 cross-attention"):
        check_fits(ckpt, [32] * 16, 32, 24, 32)


def test_decoupled_attention_formula():
    """Z = Attn(Q,K,V) + λ·Attn(Q,K',V') computed by hand on one layer."""
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4)
    k_ip, v_ip = torch.nn.Linear(6, 8, bias=False), torch.nn.Linear(6, 8, bias=False)
    ctx = AdapterContext()
    from ipa_studio.core.adapter import DecoupledAttnProcessor

    proc = DecoupledAttnProcessor(k_ip, v_ip, ctx, scale=0.7)
    x, text, tokens = torch.randn(1, 5, 8), torch.randn(1, 3, 6), torch.randn(1, 4, 6)
    ctx.set_tokens(tokens)
    out = proc(attn, x, text)

    def heads(t):
        return t.view(1, -1, 2, 4).transpose(1, 2)

    def sdpa(q, k, v):
        w = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)  # sqrt(dim_head) = 2
        return (w @ v).transpose(1, 2).reshape(1, -1, 8)

    q = heads(attn.to_q(x))
    z = sdpa(q, heads(attn.to_k(text)), heads(attn.to_v(text))) + 0.7 * sdpa(
        q, heads(k_ip(tokens)), heads(v_ip(tokens))
    )
    expected = attn.to_out[0](z)
    assert torch.allclose(out, expected, atol=1e-6)


def test_reference_bias_and_scale_resolution():
    bias, strength = reference_bias([1.0, 1.0], [4, 4], torch.device("cpu"), torch.float32)
    assert bias is None and strength == 1.0
    bias, strength = reference_bias([0.5, 0.25], [2, 2], torch.device("cpu"), torch.float32)
    assert strength == 0.5
    assert torch.allclose(bias.flatten(), torch.log(torch.tensor([1.0, 1.0, 0.5, 0.5])))
    scale = {"down_blocks": 0.2, "down_blocks.2": 0.9, "default": 0.5}
    assert resolve_scale(scale, "down_blocks.2.attentions.0.transformer_blocks.0.attn2.processor") == 0.9
    assert resolve_scale(scale, "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor") == 0.2
    assert resolve_scale(scale, "mid_block.attentions.0.transformer_blocks.0.attn2.processor") == 0.5


def test_malicious_pickles_never_execute(tmp_path):
    for writer in (write_malicious_pickle, write_legacy_malicious_pickle):
        marker = tmp_path / f"marker-{writer.__name__}"
        evil = writer(tmp_path / f"{writer.__name__}.bin", marker)
        with pytest.raises(UnsafeFileError):
            read_checkpoint(evil)
        assert not marker.exists()


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "empty"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "git-lfs pointer"),
        (b"<!DOCTYPE html><html><body>Sign in</body></html>", "web page"),
    ],
)
def test_impostor_files_are_named(tmp_path, content, message):
    path = tmp_path / "ip-adapter_sd15.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=message):
        read_checkpoint(path)


def test_truncated_files_are_named(tmp_path, tiny_adapters):
    for fmt in ("safetensors", "bin"):
        data = tiny_adapters[("global", fmt)].read_bytes()
        cut = tmp_path / f"cut.{fmt}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(ModelFileError, match="truncated"):
            read_checkpoint(cut)


def test_not_an_adapter(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ModelFileError, match="not an IP-Adapter"):
        read_checkpoint(path)

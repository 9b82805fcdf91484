"""Build the CLIP BPE tokenizer files of SD1.5 offline, from the vocabulary open_clip ships.

The SD1.5 text encoder uses OpenAI's CLIP ViT-L/14 tokenizer (``openai/clip-vit-large-patch14``,
copied into every SD1.5 repo's ``tokenizer/`` folder). Its ``vocab.json`` / ``merges.txt`` are a pure
function of OpenAI's ``bpe_simple_vocab_16e6.txt.gz``, which open_clip_torch bundles. Rebuilding them
here lets single-file checkpoints load with no network at all.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
VOCAB_SIZE = 49408
MODEL_MAX_LENGTH = 77
# OpenAI kept the first 49152 - 256 - 2 merges of the file: 256 byte tokens, their 256 "</w>" forms,
# the merges and two special tokens make 49408 ids.
_NUM_MERGES = 49152 - 256 - 2
BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")


def bundled_bpe_path() -> Path:
    """Path of open_clip's bundled BPE merges file (found without importing open_clip, which is slow)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("open_clip_torch is not installed; it provides the CLIP BPE vocabulary")
    path = Path(spec.origin).parent / BPE_FILENAME
    if not path.is_file():
        raise FileNotFoundError(f"{BPE_FILENAME} is missing from the open_clip package at {path.parent}")
    return path


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's reversible byte → printable-unicode table (the 256 base tokens, in id order)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def build_clip_vocab(bpe_path: Path | None = None) -> tuple[dict[str, int], list[str]]:
    """Return (vocab token → id, merges as "a b" lines) exactly as OpenAI CLIP constructs them."""
    text = gzip.open(bpe_path or bundled_bpe_path()).read().decode("utf-8")
    # Line 0 is a header; the rest are "left right" merges in priority order.
    merges = text.split("\n")[1 : _NUM_MERGES + 1]
    base = list(bytes_to_unicode().values())
    tokens = base + [b + "</w>" for b in base]
    tokens += ["".join(m.split()) for m in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:  # duplicates would silently shift ids
        raise ValueError(f"CLIP vocabulary has {len(vocab)} entries, expected {VOCAB_SIZE}")
    return vocab, merges


def write_clip_tokenizer_files(dest: Path) -> Path:
    """Write the SD1.5 / CLIP ViT-L/14 tokenizer folder (the four files of the hub folder) into ``dest``.

    ``transformers.CLIPTokenizer.from_pretrained(dest)`` loads the result. Returns ``dest``.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_clip_vocab()
    (dest / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (dest / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
    }
    config = {
        **special,
        "add_prefix_space": False,
        "errors": "replace",
        "do_lower_case": True,
        "model_max_length": MODEL_MAX_LENGTH,
        "tokenizer_class": "CLIPTokenizer",
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (dest / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    return dest

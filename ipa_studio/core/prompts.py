"""Prompts as people write them: emphasis weights, prompts longer than 77 tokens, ``BREAK``.

The rules are AUTOMATIC1111's, because the prompts people bring come from A1111 and from model sites
whose example prompts were made with it:

Weights (A1111 ``modules/prompt_parser.py``, ``parse_prompt_attention``)
    ``(word)`` multiplies the weight of its text by 1.1, ``[word]`` divides it by 1.1, ``(word:1.3)``
    multiplies it by 1.3; brackets nest and multiply; ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are the
    literal characters; a bracket left open applies to the end of the prompt.
    Compel's spellings are understood too and mean the same multipliers: ``word+`` / ``word++`` (×1.1
    per ``+``), ``word-`` (×0.9 per ``-``), ``(some words)1.3``, ``(some words)+``. They are only
    recognised where they end a word (before a space, a comma, a bracket or the end), so ``1girl``
    or ``close-up`` stay plain text; a prompt really meaning ``C++`` is read as ``C`` weighted 1.21.

How a weight acts (A1111 ``modules/sd_emphasis.py``, the default "Original" emphasis)
    Each 77-token chunk is encoded as usual, each token's hidden state is multiplied by its weight,
    and the chunk is then scaled back so the mean of all its values is what it was unweighted. This is
    not compel's rule (compel scales each token's difference from the empty prompt, and blends
    down-weighted text with the prompt without it) nor ComfyUI's (the difference from the empty prompt,
    without renormalising): with those, an A1111 prompt comes out visibly stronger or weaker than on
    the site it was copied from.

Long prompts (A1111 ``modules/sd_hijack_clip.py``, ``tokenize_line``)
    The text is cut into chunks of 75 tokens; each becomes BOS + 75 tokens + EOS (padding with EOS's
    pad token) = 77, is encoded on its own, and the encodings are put side by side: a 150-token prompt
    gives 2 × 77 = 154 text tokens. ``BREAK`` (in capitals) ends the current chunk. When a chunk fills
    up and a comma lies within the last 20 tokens, the words after that comma move to the next chunk,
    so a chunk boundary rarely cuts a phrase in two (A1111's default ``comma_padding_backtrack`` = 20).

An unweighted prompt of at most 75 tokens becomes exactly the ids ``tokenizer(text,
padding="max_length", truncation=True)`` gives and is encoded by the same single call, so it is
bit-identical to diffusers' own encoding.

Textual-inversion embeddings (A1111 ``modules/sd_hijack.py`` ``EmbeddingsWithFixes``)
    An embedding's name written as a word (``easynegative``, case ignored) or ComfyUI's
    ``embedding:easynegative`` stands for its vectors: it takes as many token places as it has
    vectors, their ids are a placeholder, and the text encoder's token-embedding output at those
    places is replaced by the vectors. The tokenizer and the embedding matrix are never changed, so
    taking an embedding away leaves the model as it was. An embedding never straddles two chunks: one
    that does not fit in what is left of a chunk starts the next, as in A1111.

Extra-network tags (A1111 ``modules/extra_networks.py``)
    ``<lora:name:0.8>`` (and ``<lyco:…>``, ``<hypernet:…>``) in a prompt name a network, not words:
    they are taken out of the text before it is tokenized, as A1111 does. The LoRAs themselves come
    from the request's LoRA list (``core/lora.py`` ``prompt_lora_tags`` reads the tags).

Everything else works through the model's own ``tokenizer`` and ``text_encoder``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
COMPEL_UP, COMPEL_DOWN = 1.1, 0.9
COMMA_BACKTRACK = 20
"""A chunk that fills up moves the words after its last comma to the next chunk when that comma is
at most this many tokens back (A1111's default); 0 would cut exactly at 75 tokens, as ComfyUI does."""
MAX_CHUNKS = 20
"""About 1500 tokens. Longer prompts are refused: each chunk adds 77 keys to every cross-attention
layer, and a pasted page of text would run the machine out of memory."""
SAME_LENGTH_LIMIT = 32
"""Chunks the prompt and negative prompt may be repeated to so their lengths match exactly."""
BUNDLED_TOKENIZER = Path(__file__).resolve().parents[1] / "resources" / "tokenizer"
"""SD1.5's CLIP tokenizer, the one every SD1.5 model uses (for counting tokens without a model)."""


@dataclass(frozen=True)
class Fragment:
    """A run of prompt text with one weight; ``is_break`` marks a ``BREAK`` (its text is empty)."""

    text: str
    weight: float = 1.0
    is_break: bool = False


# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------

# The token kinds of A1111's re_attention, in its order: escapes, brackets, ":number)" closing a
# weighted group, and plain text. A lone backslash is an escape of nothing and disappears, as there.
_ATTENTION = re.compile(
    r"""
    \\\( | \\\) | \\\[ | \\] | \\\\ | \\
    | \( | \[
    | :\s*([+-]?[.\d]+)\s*\)
    | \) | ]
    | [^\\()\[\]:]+
    | :
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)

# Compel's suffixes: a weight or a run of + / - right after ")" or a word, ending there.
_END = r"(?=[\s,;:!?)\]]|\.(?!\d)|$)"
_GROUP_SUFFIX = re.compile(r"(\d+(?:\.\d*)?|\.\d+|\++|-+)" + _END)
_WORD_SUFFIX = re.compile(r"(?<![^\s,(\[])(\w(?:[\w'.]|-(?=\w))*?)(\++|-+)" + _END)
_ENDS_WITH_WEIGHT = re.compile(r":\s*[+-]?[.\d]+\s*$")
_GROUP_SUFFIX_ANYWHERE = re.compile(r"\)" + _GROUP_SUFFIX.pattern)


def _suffix_weight(suffix: str) -> float:
    if suffix[0] == "+":
        return COMPEL_UP ** len(suffix)
    if suffix[0] == "-":
        return COMPEL_DOWN ** len(suffix)
    return float(suffix)


def _compel_to_a1111(text: str) -> str:
    """Rewrite compel's ``word++`` and ``(words)1.3`` as A1111's ``(word:1.21)`` and ``(words:1.3)``."""
    if "+" not in text and "-" not in text and ")" not in text:
        return text
    text = _WORD_SUFFIX.sub(lambda m: f"({m.group(1)}:{_suffix_weight(m.group(2))!r})", text)
    if not _GROUP_SUFFIX_ANYWHERE.search(text):
        return text  # no "(…)1.3" or "(…)+" at all: skip the bracket walk (long prompts, every key)
    # Groups, inner ones first: a stack of output pieces, one level per open bracket.
    levels: list[list[str]] = [[]]
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n:
            levels[-1].append(text[i : i + 2])
            i += 2
            continue
        if c == "(":
            levels.append([])
            i += 1
            continue
        if c == ")" and len(levels) > 1:
            inner = "".join(levels.pop())
            suffix = _GROUP_SUFFIX.match(text, i + 1)
            if suffix is None:
                levels[-1].append(f"({inner})")
                i += 1
                continue
            weight = _suffix_weight(suffix.group(1))
            # compel's "(x)" alone means weight 1; with a suffix the suffix is the whole weight, on
            # top of one the group already carries ("(x:1.2)+" = 1.32).
            if _ENDS_WITH_WEIGHT.search(inner):
                levels[-1].append(f"(({inner}):{weight!r})")
            else:
                levels[-1].append(f"({inner}:{weight!r})")
            i = suffix.end()
            continue
        levels[-1].append(c)
        i += 1
    while len(levels) > 1:  # unclosed brackets stay as they were written
        inner = "".join(levels.pop())
        levels[-1].append("(" + inner)
    return "".join(levels[0])


def parse_prompt(text: str) -> list[Fragment]:
    """The prompt as runs of text with their weights, and ``BREAK`` markers (A1111's rule):
    ``"an (important) word"`` → ``an `` 1.0, ``important`` 1.1, `` word`` 1.0."""
    text = _compel_to_a1111(text)
    pieces: list[list[Any]] = []  # [text, weight, is_break]
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            if not piece[2]:
                piece[1] *= factor

    for m in _ATTENTION.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\"):
            pieces.append([token[1:], 1.0, False])
        elif token == "(":
            round_open.append(len(pieces))
        elif token == "[":
            square_open.append(len(pieces))
        elif weight is not None and round_open:
            multiply(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            multiply(round_open.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_open:
            multiply(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            for k, part in enumerate(_BREAK.split(token)):
                if k > 0:
                    pieces.append(["", 1.0, True])
                pieces.append([part, 1.0, False])
    for start in round_open:
        multiply(start, ROUND_MULTIPLIER)
    for start in square_open:
        multiply(start, SQUARE_MULTIPLIER)

    merged: list[list[Any]] = []
    for piece in pieces:
        if merged and not piece[2] and not merged[-1][2] and merged[-1][1] == piece[1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    if not merged:
        merged = [["", 1.0, False]]
    return [Fragment(t, float(w), bool(b)) for t, w, b in merged]


# --------------------------------------------------------------------------------------------------
# Tokens and chunks
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptChunks:
    """A prompt as the text encoder sees it: chunks of exactly ``chunk_length + 2`` ids each."""

    ids: tuple[tuple[int, ...], ...]
    weights: tuple[tuple[float, ...], ...]
    token_count: int
    """Tokens of the prompt itself (no BOS / EOS / padding)."""
    chunk_length: int = 75
    inserts: tuple[tuple[tuple[int, str, int], ...], ...] = ()
    """Per chunk, the embedding vectors to put in: (place in the chunk, embedding name, vector
    index). Empty when the prompt uses no embedding."""

    @property
    def chunk_count(self) -> int:
        return len(self.ids)

    @property
    def capacity(self) -> int:
        """How many tokens the chunks hold: 75 per chunk."""
        return self.chunk_count * self.chunk_length

    @property
    def weighted(self) -> bool:
        return any(w != 1.0 for chunk in self.weights for w in chunk)

    def describe(self) -> str:
        """ "82 / 150 tokens · 2 chunks", as the window shows it."""
        text = f"{self.token_count} / {self.capacity} tokens"
        if self.chunk_count > 1:
            text += f" · {self.chunk_count} chunks"
        return text


NETWORK_TAG = re.compile(r"<(lora|lyco|hypernet):([^:<>]+)((?::[^:<>]*)*)>", re.IGNORECASE)
"""An A1111 extra-network tag: kind, name, and the ``:number`` parts."""


def strip_network_tags(text: str) -> str:
    """The prompt without its ``<lora:…>`` tags (what the text encoder sees)."""
    return NETWORK_TAG.sub("", text) if "<" in text else text


@dataclass(frozen=True)
class PromptTag:
    """``<lora:name:te:unet>`` as A1111's Lora extension reads it (``extensions-builtin/Lora/
    networks.py``): the first number is the text-encoder strength, the second the UNet's (default:
    the first), both 1 when absent; ``te=`` / ``unet=`` name them."""

    name: str
    strength: float
    text_strength: float
    text: str


def prompt_lora_tags(text: str) -> list[PromptTag]:
    """The ``<lora:…>`` / ``<lyco:…>`` tags of a prompt, in order; a tag whose numbers cannot be read
    is skipped (its text still never reaches the text encoder)."""
    out = []
    for m in NETWORK_TAG.finditer(text):
        if m.group(1).lower() == "hypernet":
            continue
        positional: list[float] = []
        named: dict[str, float] = {}
        try:
            for part in [p for p in m.group(3).split(":") if p.strip()]:
                key, eq, value = part.partition("=")
                if eq:
                    named[key.strip().lower()] = float(value)
                else:
                    positional.append(float(part))
        except ValueError:
            continue
        te = named.get("te", positional[0] if positional else 1.0)
        unet = named.get("unet", positional[1] if len(positional) > 1 else te)
        out.append(PromptTag(m.group(2).strip(), unet, te, m.group(0)))
    return out


EMBEDDING_PLACEHOLDER = 0
"""The id written where an embedding's vectors go (the vectors replace its embedding row)."""


def _embedding_pattern(names: Mapping[str, int]) -> re.Pattern[str]:
    # Longest names first, so "bad-hands-5" wins over "bad"; a name is a whole word (not part of a
    # longer word or hyphenated name), optionally written ComfyUI's way.
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<![\w\-:])(?:embedding:)?({alternatives})(?![\w\-])", re.IGNORECASE)


def _split_embeddings(
    text: str, pattern: re.Pattern[str] | None, lower: Mapping[str, str]
) -> list[tuple[bool, str]]:
    """``text`` as (is_embedding, text or name) runs."""
    if pattern is None:
        return [(False, text)]
    out: list[tuple[bool, str]] = []
    at = 0
    for m in pattern.finditer(text):
        out.append((False, text[at : m.start()]))
        out.append((True, lower[m.group(1).lower()]))
        at = m.end()
    out.append((False, text[at:]))
    return out


def tokenize_prompt(
    tokenizer: Any,
    text: str,
    *,
    comma_backtrack: int = COMMA_BACKTRACK,
    embeddings: Mapping[str, int] | None = None,
) -> PromptChunks:
    """Parse ``text`` and cut its tokens into chunks, following A1111's ``tokenize_line``.

    ``embeddings``: {name: number of vectors} of the textual inversions the prompt may use by name.
    """
    fragments = parse_prompt(strip_network_tags(text))
    lower = {name.lower(): name for name in embeddings or {}}
    pattern = _embedding_pattern(embeddings) if embeddings else None
    chunk_length = int(tokenizer.model_max_length) - 2
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    runs = {i: _split_embeddings(f.text, pattern, lower) for i, f in enumerate(fragments) if not f.is_break}
    texts = [piece for pieces in runs.values() for is_embedding, piece in pieces if not is_embedding]
    # Each run is tokenized on its own, as A1111 does: a weight boundary is a word boundary (and so
    # is an embedding's name: CLIP's tokenizer splits at word boundaries anyway).
    tokenized = iter(
        tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        if texts
        else []
    )

    chunks_ids: list[tuple[int, ...]] = []
    chunks_weights: list[tuple[float, ...]] = []
    chunks_inserts: list[tuple[tuple[int, str, int], ...]] = []
    ids: list[int] = []
    weights: list[float] = []
    tags: list[tuple[str, int] | None] = []  # per token: (embedding, vector index) or None
    last_comma = -1
    count = 0

    def close_chunk() -> None:
        nonlocal ids, weights, tags, last_comma
        filler = chunk_length - len(ids)
        # BOS, the tokens, EOS, then padding: the layout tokenizer(padding="max_length") makes.
        row = [bos, *ids, eos] + [pad] * filler
        chunks_ids.append(tuple(row))
        chunks_weights.append(tuple([1.0, *weights, 1.0] + [1.0] * filler))
        chunks_inserts.append(tuple((i + 1, *tag) for i, tag in enumerate(tags) if tag is not None))
        ids, weights, tags, last_comma = [], [], [], -1

    def add_embedding(name: str, weight: float) -> None:
        nonlocal count
        vectors = int(embeddings[name])  # type: ignore[index]
        if vectors > chunk_length:
            from ipa_studio.core.errors import RequestError

            raise RequestError(
                f"The embedding '{name}' has {vectors} vectors; at most {chunk_length} fit in the text "
                "encoder's window."
            )
        if len(ids) + vectors > chunk_length:
            close_chunk()
        for k in range(vectors):
            ids.append(EMBEDDING_PLACEHOLDER)
            weights.append(weight)
            tags.append((name, k))
        count += vectors

    for index, fragment in enumerate(fragments):
        if fragment.is_break:
            close_chunk()
            continue
        for is_embedding, piece in runs[index]:
            if is_embedding:
                add_embedding(piece, fragment.weight)
                continue
            for token in next(tokenized):
                if token == comma:
                    last_comma = len(ids)
                elif (
                    comma_backtrack
                    and len(ids) == chunk_length
                    and last_comma != -1
                    and len(ids) - last_comma <= comma_backtrack
                ):
                    cut = last_comma + 1
                    moved = ids[cut:], weights[cut:], tags[cut:]
                    ids, weights, tags = ids[:cut], weights[:cut], tags[:cut]
                    close_chunk()
                    ids, weights, tags = (list(m) for m in moved)
                if len(ids) == chunk_length:
                    close_chunk()
                ids.append(token)
                weights.append(fragment.weight)
                tags.append(None)
                count += 1
    if ids or not chunks_ids:
        close_chunk()
    inserts = tuple(chunks_inserts) if any(chunks_inserts) else ()
    return PromptChunks(tuple(chunks_ids), tuple(chunks_weights), count, chunk_length, inserts)


def load_bundled_tokenizer() -> Any:
    """The SD1.5 tokenizer shipped with IPA Studio (takes ~0.1 s after transformers is imported)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(BUNDLED_TOKENIZER, local_files_only=True)


# --------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------


def apply_weights(hidden: Any, weights: Any) -> Any:
    """A1111's "Original" emphasis on one chunk: scale each token, then restore the chunk's mean.

    ``hidden`` is [batch, 77, dim], ``weights`` [77] (same device and dtype).
    """
    original_mean = hidden.mean()
    hidden = hidden * weights.reshape(1, -1, 1)
    return hidden * (original_mean / hidden.mean())


def _encode_ids(text_encoder: Any, ids: Any, inserts: tuple, vectors: Mapping[str, Any] | None) -> Any:
    """One chunk through the text encoder; embedding vectors put in place of their placeholders."""
    if not inserts:
        return text_encoder(ids)[0]
    if vectors is None:
        raise ValueError("the prompt uses embeddings but no vectors were given")

    def put_vectors(_module: Any, _args: Any, output: Any) -> Any:
        output = output.clone()
        for place, name, k in inserts:
            output[:, place] = vectors[name][k].to(output.device, output.dtype)
        return output

    handle = text_encoder.get_input_embeddings().register_forward_hook(put_vectors)
    try:
        return text_encoder(ids)[0]
    finally:
        handle.remove()


def encode_chunks(
    text_encoder: Any, chunks: PromptChunks, device: Any, vectors: Mapping[str, Any] | None = None
) -> Any:
    """[1, 77 × chunks, dim]: each chunk through the text encoder on its own, weighted, side by side.

    ``vectors``: {embedding name: [n, dim]} for the embeddings the chunks use."""
    import torch

    if chunks.chunk_count > MAX_CHUNKS:
        from ipa_studio.core.errors import RequestError

        raise RequestError(
            f"The prompt needs {chunks.chunk_count} chunks of {chunks.chunk_length} tokens "
            f"({chunks.token_count} tokens); at most {MAX_CHUNKS} can be used (about "
            f"{MAX_CHUNKS * chunks.chunk_length} tokens). Shorten it."
        )
    out = []
    inserts = chunks.inserts or ((),) * chunks.chunk_count
    for ids, weights, put in zip(chunks.ids, chunks.weights, inserts, strict=True):
        hidden = _encode_ids(text_encoder, torch.tensor([ids], device=device), put, vectors)
        if any(w != 1.0 for w in weights):
            hidden = apply_weights(hidden, torch.tensor(weights, device=hidden.device, dtype=hidden.dtype))
        out.append(hidden)
    return out[0] if len(out) == 1 else torch.cat(out, dim=1)


def encode_prompt(
    tokenizer: Any,
    text_encoder: Any,
    text: str,
    device: Any,
    embeddings: Mapping[str, Any] | None = None,
) -> Any:
    """``text`` → [1, 77 × chunks, dim] text-encoder hidden states, weights applied.

    ``embeddings``: {name: vectors [n, dim]} of the textual inversions the prompt may use by name."""
    counts = {name: int(v.shape[0]) for name, v in (embeddings or {}).items()}
    chunks = tokenize_prompt(tokenizer, text, embeddings=counts or None)
    return encode_chunks(text_encoder, chunks, device, embeddings)


def same_length(
    negative: Any, positive: Any, empty: Callable[[], Any], chunk_tokens: int = 77
) -> tuple[Any, Any]:
    """The two encodings made equally long so they can share one classifier-free-guidance batch.

    Each is repeated whole up to the least common multiple of their chunk counts. Attention over a
    sequence repeated k times equals attention over it once (every key gains k copies, the softmax's
    numerator and denominator alike), so this gives what encoding them in separate UNet passes gives:
    A1111's default and ComfyUI's own way (``cond_cat``). When the multiple would exceed
    ``SAME_LENGTH_LIMIT`` chunks, the shorter one is padded with ``empty()`` chunks (the empty prompt's
    encoding) instead, as A1111's "Pad prompt/negative prompt" option does; that changes the picture
    slightly, where the exact way would cost too much memory.
    """
    import torch

    a, b = negative.shape[1] // chunk_tokens, positive.shape[1] // chunk_tokens
    if a == b:
        return negative, positive
    multiple = math.lcm(a, b)
    if multiple <= SAME_LENGTH_LIMIT:
        return negative.repeat(1, multiple // a, 1), positive.repeat(1, multiple // b, 1)
    longest = max(a, b)
    blank = empty()

    def pad(x: Any, chunks: int) -> Any:
        if chunks == longest:
            return x
        return torch.cat([x, blank.expand(x.shape[0], -1, -1).repeat(1, longest - chunks, 1)], dim=1)

    return pad(negative, a), pad(positive, b)

"""Put the settings of a picture made by another program (A1111, ComfyUI, InvokeAI) into the panels.

The picture's prompt, negative prompt, seed, steps, guidance, size and sampler go into the view
state; its checkpoint is looked up in the model library by hash, then by name. The references,
controls and mode are left as they are: those programs' pictures say nothing IPA Studio could use
for them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ipa_studio.core.foreign_metadata import ForeignSettings
from ipa_studio.gui.state import SEED_LIMIT, ViewState, within_limits


def find_base_model(
    entries: Iterable[Any], name: str | None, model_hash: str | None, known: dict[str, str] | None = None
) -> Any | None:
    """The usable base model of the library with this hash (short or full), else with this name.

    ``known`` adds hashes the library has not stored yet (path → sha256, e.g. from the hash cache).
    """
    bases = [e for e in entries if e.kind == "base" and e.usable]
    if model_hash:
        wanted = model_hash.lower()
        for entry in bases:
            sha = (entry.sha256 or (known or {}).get(str(entry.path)) or "").lower()
            if sha and sha.startswith(wanted):
                return entry
    if name:
        wanted = name.strip().lower()
        for entry in bases:
            if wanted in (entry.name.lower(), Path(entry.path).stem.lower(), Path(entry.path).name.lower()):
                return entry
    return None


def apply_foreign_settings(
    state: ViewState, s: ForeignSettings, entries: Iterable[Any] = (), known: dict[str, str] | None = None
) -> list[str]:
    """Fill the state from ``s``; returns notes for people on what was changed or not taken over.

    ``entries`` are the library's (``LibraryEntry``); ``known`` as for :func:`find_base_model`."""
    notes: list[str] = []
    if s.prompt is not None:
        state.set("prompt", s.prompt)
    if s.negative_prompt is not None:
        state.set("negative_prompt", s.negative_prompt)
    if s.seed is not None:
        if 0 <= s.seed <= SEED_LIMIT:
            # As Reuse settings: the next picture uses this seed; later ones are the person's choice.
            state.choose_seed(s.seed)
        else:
            notes.append(f"Its seed, {s.seed}, is outside what IPA Studio can use; a new one will be drawn.")
    if s.steps is not None:
        state.set("steps", int(within_limits("steps", s.steps)))
    if s.guidance is not None:
        state.set("guidance", round(within_limits("guidance", s.guidance), 2))
    if s.width and s.height:
        size = (
            int(within_limits("width", round(s.width / 8) * 8)),
            int(within_limits("height", round(s.height / 8) * 8)),
        )
        state.set("width", size[0])
        state.set("height", size[1])
        if size != (s.width, s.height):
            notes.append(f"Its size, {s.width}×{s.height}, became {size[0]}×{size[1]} (a multiple of 8).")
    if s.scheduler is not None:
        state.set("scheduler", s.scheduler)
    notes.extend(s.notes)

    if s.model_name or s.model_hash:
        entry = find_base_model(entries, s.model_name, s.model_hash, known)
        label = s.model_name or s.model_hash
        if entry is None:
            notes.append(f"Its model, {label}, is not in your model library; the current one was kept.")
        elif str(entry.path) != state.models.base:
            state.set_models(replace(state.models, base=str(entry.path)))
            notes.append(f"Its model, {label}, was found in your library as {entry.name} and chosen.")
    return notes

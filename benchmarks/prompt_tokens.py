"""What the token count under the prompt costs while typing (offscreen Qt, the real prompt panel).

Prints, for prompts of about 20, 150, 600 and 1500 tokens: the time one key press takes in the prompt
box with the count on and with it switched off (keys typed faster than the count's 40 ms delay are
counted once, after the last), measured interleaved in this one run (median over rounds), and the
time of one count itself, as a share of a 16 ms frame. Also the tokenizer's load time, which happens
once, on a background thread.

    QT_QPA_PLATFORM=offscreen python benchmarks/prompt_tokens.py --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtTest import QTest  # noqa: E402, TID251 - the benchmark drives the Qt prompt box
from PySide6.QtWidgets import QApplication  # noqa: E402, TID251

from ipa_studio.core.prompts import load_bundled_tokenizer, tokenize_prompt  # noqa: E402
from ipa_studio.gui.panels.prompt import TOKENIZER, PromptPanel  # noqa: E402
from ipa_studio.gui.state import ViewState  # noqa: E402

WORDS = "a red car on a wet street at night, (masterpiece:1.2), best quality, cinematic light".split()


def prompt_of(tokens: int, tokenizer) -> str:
    text, i = "", 0
    while tokenize_prompt(tokenizer, text).token_count < tokens:
        text += WORDS[i % len(WORDS)] + " "
        i += 1
    return text


def per_key_ms(panel: PromptPanel, base: str, keys: str, counting: bool) -> float:
    box, count = panel.prompt, panel.prompt_count
    if not counting:
        box.textChanged.disconnect(count._timer.start)
    box.setPlainText(base)
    box.moveCursor(box.textCursor().MoveOperation.End)
    start = time.perf_counter()
    QTest.keyClicks(box, keys)
    QTest.qWait(count.DELAY_MS + 20)  # the count after the last key is part of the cost
    elapsed = (time.perf_counter() - start - (count.DELAY_MS + 20) / 1000) * 1000 / len(keys)
    if not counting:
        box.textChanged.connect(count._timer.start)
    return elapsed


def count_ms(panel: PromptPanel, base: str, repeats: int = 20) -> float:
    panel.prompt.setPlainText(base)
    start = time.perf_counter()
    for _ in range(repeats):
        panel.prompt_count.refresh()
    return (time.perf_counter() - start) * 1000 / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    app = QApplication.instance() or QApplication([])

    start = time.perf_counter()
    tokenizer = load_bundled_tokenizer()
    print(f"tokenizer load (once, background thread): {(time.perf_counter() - start) * 1000:.0f} ms")
    panel = PromptPanel(ViewState())
    panel.show()
    while TOKENIZER.get() is None:
        app.processEvents()
        time.sleep(0.01)

    keys = " cinematic light, golden hour"
    for tokens in (20, 150, 600, 1500):
        base = prompt_of(tokens, tokenizer)
        on, off, one = [], [], []
        for _ in range(args.rounds):
            on.append(per_key_ms(panel, base, keys, True))
            off.append(per_key_ms(panel, base, keys, False))
            one.append(count_ms(panel, base))
        with_count, without, single = statistics.median(on), statistics.median(off), statistics.median(one)
        print(
            f"~{tokens:>4} tokens: key press {with_count:.2f} ms with the count, {without:.2f} ms without; "
            f"one count {single:.2f} ms = {single / 16 * 100:.0f}% of a 16 ms frame   "
            f"[{panel.prompt_count.text()}]"
        )


if __name__ == "__main__":
    main()

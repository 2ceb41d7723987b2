"""Ids and names as people read them: a look-alike skeleton for user ids (after Unicode TR39), safe display names."""

from __future__ import annotations

import functools
import json
import unicodedata
from importlib import resources

MAX_NAME_BYTES = 200  # a display name as shown: at most this much UTF-8

# Format characters that reorder or hide text: bidi embeddings, overrides and isolates, and the invisible ones.
_BIDI = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


def skeleton(user_id: str) -> str:
    """What `user_id` looks like: two ids with the same skeleton are easy to take for each other (`аlice` in
    Cyrillic and `alice`, fullwidth `ａlice`, `alice` and `aIice`, `b0b` and `BOB`, `user3` and `user٣`).

    After Unicode TR39's skeleton: compatibility forms folded (NFKC), accents dropped, each character replaced
    by its prototype from Unicode's confusables data (through the confusable_homoglyphs package's table), other
    digits of every script read as 0-9; then case is folded and prototypes applied once more, so that case
    variants count as look-alikes too."""
    table = _prototypes()

    def alike(text: str) -> str:
        return "".join(table.get(c) or (str(unicodedata.digit(c)) if unicodedata.category(c) == "Nd" else c)
                       for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")

    return alike(alike(unicodedata.normalize("NFKC", user_id)).casefold())


@functools.cache
def _prototypes() -> dict[str, str]:
    """Each character that has a prototype in TR39's confusables -> that prototype (one or more characters).

    The package's table lists, for each character, the characters confused with it in either direction: a
    character that is not a prototype lists exactly its prototype; a prototype lists those that map to it.
    Two characters that each list only the other are one pair: both map to the lower one."""
    data = json.loads(resources.files("confusable_homoglyphs").joinpath("confusables.json").read_text("utf-8"))
    alikes = {char: [a["c"].strip("\u200e\u200f") for a in entries] for char, entries in data.items()}
    table = {}
    for char, others in alikes.items():
        if len(char) != 1 or len(others) != 1 or others[0] == char:
            continue
        target = others[0]
        if alikes.get(target) == [char]:
            target = min(char, target)
        if target != char:
            table[char] = target
    return table


def display_name(name: str, fallback: str) -> str:
    """`name` made safe to show: no control or bidi-reordering characters, runs of white space as one space, at
    most MAX_NAME_BYTES of UTF-8; `fallback` (the user id) when nothing visible is left."""
    kept = []
    for c in name:
        category = unicodedata.category(c)
        if c in _BIDI or category in ("Cc", "Cs", "Co", "Cn") or (category == "Cf" and c != "\u200d"):
            continue  # ZWJ stays: it joins emoji sequences
        kept.append(" " if category in ("Zs", "Zl", "Zp") else c)
    text = " ".join("".join(kept).split())
    if not any(unicodedata.category(c)[0] in "LNPS" for c in text):
        return fallback
    raw = text.encode()[:MAX_NAME_BYTES]
    return raw.decode(errors="ignore").strip() or fallback

"""Look-alike user ids share a skeleton, different ones do not; display names lose what could deceive or break."""

import pytest

from shared.names import MAX_NAME_BYTES, display_name, skeleton


@pytest.mark.parametrize("one,other", [
    ("alice", "\u0430lice"),  # Cyrillic a
    ("alice", "ａｌｉｃｅ"),  # fullwidth
    ("alice", "aIice"), ("alice", "a1ice"), ("alice", "Alice"), ("bob", "B0B"),
    ("user3", "user\u0663"),  # Arabic-Indic three
    ("jose", "jos\u00e9"), ("paypal", "p\u0430yp\u0430l"), ("dave", "d\u0430ve"),
])
def test_look_alikes_share_a_skeleton(one, other):
    assert skeleton(one) == skeleton(other)


@pytest.mark.parametrize("one,other", [("alice", "alise"), ("ann", "anna"), ("bob", "bab"), ("u", "v"),
                                       ("user1", "user2"), ("ben", "ken")])
def test_different_ids_keep_different_skeletons(one, other):
    assert skeleton(one) != skeleton(other)


@pytest.mark.parametrize("raw,shown", [
    ("Alice\u202e", "Alice"),  # right-to-left override
    ("\u2067Mallory\u2069", "Mallory"),
    ("\u200b\u200b", "fallback"),  # zero-width only
    ("   \t ", "fallback"),
    ("A\x1b[31mB", "A[31mB"),  # ANSI escape: the ESC goes, what is left is harmless text
    ("x\x00y\nz", "xyz"),
    ("Ann  \u00a0 Lee", "Ann Lee"),
    ("\U0001f3f3\ufe0f\u200d\U0001f308 Pride", "\U0001f3f3\ufe0f\u200d\U0001f308 Pride"),  # ZWJ emoji kept
])
def test_display_names_are_made_safe_to_show(raw, shown):
    assert display_name(raw, "fallback") == shown


def test_display_names_are_bounded_in_bytes_at_a_character_boundary():
    shown = display_name("\U0001f600" * 100, "x")  # 400 bytes of emoji
    assert len(shown.encode()) <= MAX_NAME_BYTES and shown == "\U0001f600" * (MAX_NAME_BYTES // 4)

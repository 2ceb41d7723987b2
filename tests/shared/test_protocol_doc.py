"""docs/protocol.md is the public contract: each of its JSON examples is what encode() writes, byte for byte."""

import re
from pathlib import Path

import pytest

from shared import protocol as p

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
EXAMPLES = re.findall(r"```json\n(.*?)\n```", DOC.read_text(), re.S)


def test_the_reference_has_an_example_of_every_message_type():
    shown = {p.decode(raw).type for raw in EXAMPLES}
    assert shown == set(p.REGISTRY), f"no example of {sorted(set(p.REGISTRY) - shown)}"


@pytest.mark.parametrize("raw", EXAMPLES, ids=lambda raw: raw[9:40])
def test_each_example_decodes_and_encodes_to_itself(raw):
    assert p.decode(raw).encode() == raw

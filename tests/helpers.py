"""Helpers shared by the test modules (never import one test module from another)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_FIELD_ROW = re.compile(r"^\| `(?P<name>[a-z_]+)` \|", re.MULTILINE)


def documented_record_fields() -> list[str]:
    """The inference-log fields, in order, as docs/inference-log.md documents them."""
    text = (REPO / "docs" / "inference-log.md").read_text(encoding="utf-8")
    return [match["name"] for match in _FIELD_ROW.finditer(text)]

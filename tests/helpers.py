"""Helpers shared by the test modules (never import one test module from another)."""

import json
import re
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
_FIELD_ROW = re.compile(r"^\| `(?P<name>[a-z_]+)` \|", re.MULTILINE)


def documented_record_fields() -> list[str]:
    """The inference-log fields, in order, as docs/inference-log.md documents them."""
    text = (REPO / "docs" / "inference-log.md").read_text(encoding="utf-8")
    return [match["name"] for match in _FIELD_ROW.finditer(text)]


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a gateway's /metrics, keyed by (sample name, its labels)."""
    text = httpx.get(f"{url}/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """One sample's value (0 when absent): `sample(s, "gateway_requests_total", status="200")`.

    Labels not given are summed over.
    """
    wanted = set(labels.items())
    return sum(
        value for (found, pairs), value in samples.items() if found == name and wanted <= pairs
    )


def read_records(directory: Path) -> list[dict[str, Any]]:
    """Every inference-log record in a directory's files."""
    return [
        json.loads(line)
        for path in sorted(directory.glob("*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if line
    ]

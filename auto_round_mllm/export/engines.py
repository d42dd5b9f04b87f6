"""Which serving engines were measured to load each format: the record ``scripts/check_engines.py
--write`` leaves in ``engines_measured.json`` beside this module (read by ``list formats``).

A claim about an engine lives in that record, produced by loading our checkpoints in the engine,
never in prose: README's engine table is rendered from the same record.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

RECORD = Path(__file__).with_name("engines_measured.json")


@functools.cache
def measured() -> dict[str, Any]:
    """The last recorded engine check ({} when none was recorded)."""
    if not RECORD.is_file():
        return {}
    return json.loads(RECORD.read_text(encoding="utf-8"))


def engines_by_format(record: dict[str, Any]) -> dict[str, list[str]]:
    """Per format: ``"<engine>: <scheme>"`` for each scheme the engine loaded and matched on every
    family checked, and ``"<engine> rejects <scheme>"`` for each it refused on all of them."""
    by_key: dict[tuple[str, str], set[str]] = {}
    for cell in record.get("cells", []):
        by_key.setdefault((cell["format"], cell["scheme"]), set()).add(cell["status"])
    engine = record.get("engine", "engine")
    out: dict[str, list[str]] = {}
    for (fmt, scheme), statuses in sorted(by_key.items()):
        if statuses == {"pass"}:
            out.setdefault(fmt, []).append(f"{engine}: {scheme}")
        elif statuses == {"rejected"}:
            out.setdefault(fmt, []).append(f"{engine} rejects {scheme}")
    return out


PACKINGS_OF_AUTO_ROUND = {"auto_round:auto_gptq": False, "auto_round:auto_awq": True}
"""The explicit packings write the bytes ``auto_round`` writes for symmetric (GPTQ) and asymmetric
4-bit (AWQ) schemes: the check measures them through ``auto_round``."""


def engine_note(fmt: str) -> str:
    """One line for ``list formats``: what the recorded check found for ``fmt``."""
    found = engines_by_format(measured()).get(fmt)
    if fmt in PACKINGS_OF_AUTO_ROUND:
        asym = PACKINGS_OF_AUTO_ROUND[fmt]
        found = [
            entry
            for entry in engines_by_format(measured()).get("auto_round", [])
            if entry.endswith(" asym") == asym and " W4" in entry
        ]
    if not found:
        return "no engine check recorded"
    loaded = [entry.split(": ", 1)[1] for entry in found if ": " in entry]
    rejected = [entry.split(" rejects ", 1)[1] for entry in found if " rejects " in entry]
    parts = []
    engine = measured().get("engine", "engine")
    if loaded:
        parts.append(f"{engine} loads {', '.join(loaded)}")
    if rejected:
        parts.append(f"{'' if loaded else engine + ' '}rejects {', '.join(rejected)}")
    return "; ".join(parts) + f" (measured {measured().get('date', '?')})"

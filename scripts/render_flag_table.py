"""Rewrite README's flag tables from auto_round_mllm/flags.py and autoround_flags.py.

Usage: python scripts/render_flag_table.py [--check]
(tests/test_flags.py fails while README disagrees with the table; this script is the fix.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from auto_round_mllm import autoround_flags, flags

README = Path(__file__).resolve().parents[1] / "README.md"


TABLES = (flags, autoround_flags)
"""Each module has README_START, README_END and readme_table()."""


def rendered(text: str) -> str:
    """``text`` with the part between each table's markers replaced by the rendered table."""
    for table in TABLES:
        start = text.index(table.README_START) + len(table.README_START)
        end = text.index(table.README_END)
        text = text[:start] + "\n" + table.readme_table() + "\n" + text[end:]
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README differs, write nothing")
    args = parser.parse_args()
    text = README.read_text(encoding="utf-8")
    new = rendered(text)
    if args.check:
        if new != text:
            print(
                "README's flag tables differ from auto_round_mllm/flags.py or autoround_flags.py",
                file=sys.stderr,
            )
            return 1
        return 0
    README.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

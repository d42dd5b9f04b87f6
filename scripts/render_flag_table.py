"""Rewrite README's flag table from the flag table in auto_round_mllm/flags.py.

Usage: python scripts/render_flag_table.py [--check]
(tests/test_flags.py fails while README disagrees with the table; this script is the fix.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from auto_round_mllm.flags import README_END, README_START, readme_table

README = Path(__file__).resolve().parents[1] / "README.md"


def rendered(text: str) -> str:
    """``text`` with the part between the markers replaced by the rendered table."""
    start = text.index(README_START) + len(README_START)
    end = text.index(README_END)
    return text[:start] + "\n" + readme_table() + "\n" + text[end:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README differs, write nothing")
    args = parser.parse_args()
    text = README.read_text(encoding="utf-8")
    new = rendered(text)
    if args.check:
        if new != text:
            print("README's flag table differs from auto_round_mllm/flags.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

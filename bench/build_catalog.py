"""Write the snapshot of the built-in catalogue (kavier_opendc/specs/builtin_catalog.json): models.yaml,
gpus.yaml and profiles.yaml parsed and validated ahead, and frameworks.yaml parsed, so that a run loads the
catalogue in a millisecond without a YAML parser.

Run it after editing any of those files (bench/build_profiles.py regenerates profiles.yaml;
bench/build_frameworks.py rewrites frameworks.yaml and runs this itself); a run whose YAML no longer
matches the snapshot parses the YAML itself (correct, only slower), and the tests fail.

    python bench/build_catalog.py           # write it
    python bench/build_catalog.py --check   # compare with the committed file
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kavier_opendc.base.atomic import atomic_write_text
from kavier_opendc.specs.catalog import SNAPSHOT_FILE, builtin_snapshot

OUT = Path(__file__).resolve().parents[1] / "kavier_opendc" / "specs" / SNAPSHOT_FILE


def snapshot_text() -> str:
    return json.dumps(builtin_snapshot(), indent=1, sort_keys=True, allow_nan=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed file instead of writing it")
    args = ap.parse_args(argv)
    text = snapshot_text()
    if args.check:
        same = OUT.is_file() and OUT.read_text(encoding="utf-8") == text
        print(f"{SNAPSHOT_FILE} is up to date" if same else f"{SNAPSHOT_FILE} differs from a rebuild")
        return 0 if same else 1
    atomic_write_text(OUT, text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

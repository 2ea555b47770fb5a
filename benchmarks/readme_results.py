"""Regenerate the results section of README.md from the committed JSON (no hand-typed numbers).

python benchmarks/readme_results.py          # rewrite README.md between the results markers
python benchmarks/readme_results.py --check  # exit 1 if README.md is not what the JSON says
"""

import argparse
import sys
from pathlib import Path

from fisherpack.bench import readme, tables

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    path = ROOT / "README.md"
    sys.exit(readme.rewrite(path, tables.update(path.read_text(), ROOT / "benchmarks" / "results"), args.check))

"""Write the inference table of README.md from benchmarks/results/inference.json (never by hand).

python benchmarks/report.py [RESULTS.json]
"""

import json
import sys
from pathlib import Path

from fisherpack.bench import readme, report

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "benchmarks" / "results" / "inference.json"
    path = ROOT / "README.md"
    readme.rewrite(path, report.update(path.read_text(), json.loads(source.read_text())), check=False)

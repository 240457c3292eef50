"""Benchmarks, printed as ratios measured side by side: python scripts/bench.py [SECTION ...]"""

import sys

from study.bench import main

if __name__ == "__main__":
    sys.exit(main())

"""Compare MLflow runs side by side: python scripts/compare.py RUN_ID RUN_ID ... [--output F]"""

import sys

from study.cli import compare_main

if __name__ == "__main__":
    sys.exit(compare_main())

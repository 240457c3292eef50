"""Train one model, or run a study: python scripts/run.py [-m] [CONFIG] [key=value ...]"""

import sys

from study.cli import run_main

if __name__ == "__main__":
    sys.exit(run_main())

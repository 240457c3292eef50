"""Train one model, or run a study: python scripts/run.py [-m] [CONFIG] [key=value ...]"""

from study.cli import run_main
from study.errors import exit_now

if __name__ == "__main__":
    exit_now(run_main())

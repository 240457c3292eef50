"""Rerun an MLflow run from what it logged: python scripts/reproduce.py RUN_ID"""

import sys

from study.cli import reproduce_main

if __name__ == "__main__":
    sys.exit(reproduce_main())

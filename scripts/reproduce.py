"""Rerun an MLflow run from what it logged: python scripts/reproduce.py RUN_ID"""

from study.cli import reproduce_main
from study.errors import exit_now

if __name__ == "__main__":
    exit_now(reproduce_main())

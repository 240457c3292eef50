"""Compare MLflow runs side by side: python scripts/compare.py RUN_ID RUN_ID ... [--output F]"""

from study.cli import compare_main
from study.errors import exit_now

if __name__ == "__main__":
    exit_now(compare_main())

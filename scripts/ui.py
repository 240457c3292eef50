"""Open the MLflow UI on the project's store: python scripts/ui.py [--port 5000] [--host ...]"""

import sys

from study.cli import ui_main

if __name__ == "__main__":
    sys.exit(ui_main())

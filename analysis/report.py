"""Entry point: the sweep report, as `emrobust analyze` (the library is the package emrobust.analysis, shipped
inside emrobust so that its name clashes with no other installed package).
    python analysis/report.py SWEEP_DIR [--out DIR] ...   or   python -m analysis.report ... (repository root)"""
import sys

from emrobust.analysis.report import main

if __name__ == "__main__":
    sys.exit(main())

"""Command: Speech Commands' tables (paper Tables 5-7) alone, ``python experiments/tables_speech_commands.py --results
DIR`` (the code: ``experiments/reporting/speech_commands.py``; ``--help`` for the options)."""
import sys

from experiments.reporting.speech_commands import main

if __name__ == "__main__":
    sys.exit(main())

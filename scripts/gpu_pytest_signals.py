"""pytest plugin for scripts/gpu_run.sh (`-p gpu_pytest_signals`): a time box's SIGTERM, or a SIGINT
even where the shell that started pytest ignores it, ends the run the way Ctrl-C does, so pytest
still prints the counts of the tests that ran."""
from __future__ import annotations

import signal


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)

import sys

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def pytest_terminal_summary(terminalreporter):
    """Case counts of the fuzz suite (tests/test_fuzz.py), printed whatever the verbosity."""
    fuzz = sys.modules.get("fuzzcases")
    if fuzz is not None and fuzz.COUNTS:
        terminalreporter.write_sep("-", "fuzz cases (tests/fuzzcases.py)")
        terminalreporter.write_line(fuzz.report())

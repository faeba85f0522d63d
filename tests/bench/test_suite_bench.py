"""bench/suite.py reads pytest's own summary line (the suite itself is run by `python -m bench suite`, never in a
test: it would run the tests inside a test)."""
import pytest

from bench import suite


def test_the_summary_line_gives_time_and_counts():
    output = ("tests/ui/test_browser.py ....\n"
              "FAILED tests/ui/test_browser.py::test_x - TimeoutError\n"
              "=========== 1 failed, 492 passed, 263 warnings in 1218.48s (0:20:18) ===========\n")
    assert suite.pytest_summary(output) == {"seconds": 1218.48, "failed": 1, "passed": 492, "warnings": 263}
    quiet = "434 passed, 59 deselected, 207 warnings in 171.50s (0:02:51)\n"      # -q prints no rules
    assert suite.pytest_summary(quiet) == {"seconds": 171.5, "passed": 434, "deselected": 59, "warnings": 207}
    with pytest.raises(ValueError, match="no pytest summary"):
        suite.pytest_summary("collecting ...\nTraceback (most recent call last):\nKeyboardInterrupt\n")


def test_the_last_summary_counts():
    first = "==== 3 passed in 1.00s ====\n"
    last = "================ 493 passed, 2 skipped, 278 warnings in 764.63s (0:12:44) =================\n"
    assert suite.pytest_summary(first + "more output\n" + last) == {
        "seconds": 764.63, "passed": 493, "skipped": 2, "warnings": 278}

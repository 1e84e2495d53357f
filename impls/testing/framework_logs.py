"""TensorFlow's own log lines, kept out of the checker's reports.

TensorFlow writes C++ log lines (oneDNN notices, absl warnings, error-level lines about graph
attributes) to the process's stderr, which in the checker's child processes is the file of what the
function under test printed. They are the framework's, not the function's: `split` takes them out.
The child processes set TensorFlow's level before they import it (`child_level`): every line
hidden, unless the user set TF_CPP_MIN_LOG_LEVEL. Then the level is theirs, and the lines it lets
through are shown on stderr as they are, never as the function's output.
"""

import os
import re

VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
#: The user's own level, read when `impls.testing` is first imported: before `impls.backends`,
#: which sets a level of its own where none is set.
USER_LEVEL = os.environ.get(VARIABLE)
#: Every level hidden: the checker reports what matters of a failure itself.
QUIET_LEVEL = "3"

_LOG_LINE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWEF]\d{4} [\d:.]+ +\d+ [\w./-]+:\d+\] .*"  # absl
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] [\w./-]+:\d+\] .*"  # TensorFlow's own
    # the second line of TensorFlow's notice about CPU instructions
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler "
    r"flags\.)$"
)


def user_wants_logs() -> bool:
    return USER_LEVEL is not None


def split(text: str) -> tuple[str, str]:
    """(TensorFlow's log lines, everything else) of what a process printed."""
    logs: list[str] = []
    rest: list[str] = []
    for line in text.splitlines(keepends=True):
        (logs if _LOG_LINE.match(line.rstrip("\n")) else rest).append(line)
    return "".join(logs), "".join(rest)


def child_level() -> str:
    """The level the checker's child processes run TensorFlow at: the user's, or quiet."""
    return USER_LEVEL if USER_LEVEL is not None else QUIET_LEVEL

"""What the frameworks print while they train, kept out of the progress bars.

TensorFlow writes C++ log lines to the process's stderr (file descriptor 2) whatever Python does:
a oneDNN notice and an absl warning on import at any TF_CPP_MIN_LOG_LEVEL, error-level lines
about graph attributes while it trains. Written between two updates of a progress bar they tear
it apart. While `kept_aside` is open, descriptor 2 goes to a temporary file (spawned processes
inherit it) and the progress bars get a stream of their own on the real stderr; when it closes,
what was kept aside is shown after all: every line that is not a framework's log line (Python
warnings, say), and the framework's log lines too where the user set TF_CPP_MIN_LOG_LEVEL
(`impls.testing.framework_logs`), never as the run's own output.
"""

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from impls.testing import framework_logs


def quiet_level() -> None:
    """TensorFlow's log level for this process and the ones it starts, set before TensorFlow is
    imported: the user's own, or every line hidden."""
    os.environ[framework_logs.VARIABLE] = framework_logs.child_level()


@contextmanager
def kept_aside() -> Iterator[TextIO]:
    """Descriptor 2 into a temporary file while open (module docstring); yields the stream on
    the real stderr for progress bars."""
    sys.stderr.flush()
    real = os.dup(2)
    bars = os.fdopen(os.dup(real), "w", buffering=1)
    with tempfile.TemporaryFile() as kept:
        os.dup2(kept.fileno(), 2)
        try:
            yield bars
        finally:
            sys.stderr.flush()
            os.dup2(real, 2)
            os.close(real)
            bars.close()
            kept.seek(0)
            logs, rest = framework_logs.split(kept.read().decode(errors="replace"))
            shown = rest + (logs if framework_logs.user_wants_logs() else "")
            if shown:
                os.write(2, shown.encode())

"""The stream's stop is bounded: after SIGTERM the process is gone within
``spark.stop_timeout_seconds`` even when what it waits for never returns."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from streaming.job import EXIT_STOPPED_HARD


def test_sigterm_exits_by_the_deadline_when_the_batch_never_finishes() -> None:
    child = textwrap.dedent(
        """
        import os, signal, threading
        from streaming.job import Stopper
        stopper = Stopper(timeout_s=1.0)
        stopper.install()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stopper.event.is_set()
        threading.Event().wait()  # a micro-batch stuck on a service that went away
        """
    )
    # Without the deadline the child would wait forever and the timeout would fail the test.
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=60)
    assert result.returncode == EXIT_STOPPED_HARD, result.stderr.decode()[-2000:]
    assert b"stopping now" in result.stderr

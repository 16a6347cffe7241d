"""LocalStack's own process: how it is stopped (the parts and the first model are tested in
test_stack_e2e.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

RUN = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from lepton_stack.stack import LocalStack
    from lepton_stack.state import StackLayout
    from lepton_stack.supervisor import Supervisor

    stack = LocalStack(StackLayout(root=Path(sys.argv[1])))
    stack.supervisor = supervisor = Supervisor([])
    watch = supervisor.watch

    def watching():
        print("watching", flush=True)  # the signal handlers are in place by now
        watch()

    supervisor.watch = watching
    stack.run()
    print("run returned", flush=True)
    """
)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_run_returns_to_the_shutdown_on_ctrl_c_down_and_a_closed_terminal(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """Ctrl-C, `lepton down` and closing the terminal window all end in the shutdown that keeps
    the buckets, not in the process dying with the last 10 s of them."""
    stack = subprocess.Popen(
        [sys.executable, "-c", RUN, str(tmp_path / ".lepton")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert stack.stdout is not None and stack.stdout.readline() == "watching\n"

        stack.send_signal(signum)

        assert stack.stdout.readline() == "run returned\n"
        assert stack.wait(10) == 0
    finally:
        if stack.poll() is None:
            stack.kill()
            stack.wait(5)

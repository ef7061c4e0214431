"""A killed trial process's scratch folder is removed by the next trial on the node; a live one's never is."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from sweeps.engine.scratch import remove_abandoned, trial_scratch_dir

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from sweeps.engine.scratch import trial_scratch_dir
    with trial_scratch_dir(Path(sys.argv[1])) as work:
        (work / "checkpoint.pt").write_bytes(b"x" * 1024)
        print(work, flush=True)
        time.sleep(600)
""")


def hold_scratch_dir(root: Path) -> tuple[subprocess.Popen, Path]:
    """A process inside `trial_scratch_dir(root)`, and its folder."""
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], stdout=subprocess.PIPE, text=True)
    return process, Path(process.stdout.readline().strip())


def test_a_killed_trials_folder_is_removed_by_the_next_and_a_live_ones_is_kept(tmp_path):
    live, live_dir = hold_scratch_dir(tmp_path)
    killed, killed_dir = hold_scratch_dir(tmp_path)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert (killed_dir / "checkpoint.pt").exists()  # nothing of the killed process could clean up

        with trial_scratch_dir(tmp_path) as work:
            assert not killed_dir.exists()
            assert (live_dir / "checkpoint.pt").exists()
            assert work.is_dir()
        assert not work.exists()  # a trial that ends normally removes its own
        assert remove_abandoned(tmp_path) == []  # the live holder keeps its lock
    finally:
        live.kill()
        live.wait()
    assert remove_abandoned(tmp_path) == [live_dir]
    assert list(tmp_path.iterdir()) == []

"""Starting `fastig <command>` in several processes on this machine (accelerate launch), and ending them.

`fastig attribute --processes N` splits every document's integration steps (fastig.processes);
`fastig dataset --processes N` splits the documents instead (longest first, dealt round-robin so
each process gets a similar share of tokens): each process writes its own shards and the main
process merges them into the files one process would write.

Nothing outlives the command: a rank that dies makes the launcher stop the others, and the
launcher and every rank get SIGKILL when their parent dies (Linux's parent-death signal), so a
kill -9 of `fastig ... --processes N` stops them all instead of leaving ranks writing on; Ctrl-C or
a SIGTERM stops them as it stops one process (relaunch). The
ranks run with PYTHONSAFEPATH=1: `python -m fastig` then does not put the current folder first
on the import path, where a file named fastig.py would run in every rank.
"""

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys

import torch

from ..errors import InputError


def exit_launched(code: int):
    """End a launched process with `code`: its process group destroyed and its output flushed, then
    os._exit, which skips C++ static destructors. One of them aborted a rank now and then after all
    its work was done ("terminate called without an active exception", no Python frame left; 2 runs
    in 20 under CPU load, also with the group destroyed at exit)."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def launch_command(argv: list[str], processes: int) -> list[str]:
    """The accelerate launch command running `fastig <argv>` in `processes` processes on this machine,
    through this module, which first ties the launcher's life to its parent's.

    accelerate's torchrun launcher (--multi_gpu) starts the processes on CPUs too; `--cpu`
    alone starts one process unless an MPI hostfile is configured.
    """
    gpus = torch.cuda.device_count()
    if 0 < gpus < processes:
        raise InputError(f"--processes {processes}: this machine has {gpus} GPUs; give at most {gpus}")
    return [sys.executable, "-m", __name__, "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--main_process_port", str(_free_port()), "--mixed_precision", "no",
            "--dynamo_backend", "no", "-m", "fastig", *argv]


def _free_port() -> int:
    """A port free now: runs started one after the other do not meet on the launcher's default 29500."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """This process gets SIGKILL when its parent dies (Linux; elsewhere nothing changes). If the parent is
    already gone, which a fork can race with, it exits now."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return
    parent = os.getppid()
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def relaunch(argv: list[str], processes: int) -> int:
    """Run `fastig <argv>` under accelerate launch in `processes` processes; its exit code, or 130 when
    stopped by Ctrl-C or a SIGTERM (the command's handler turns it into one).

    The launcher runs in a session of its own, so such a stop reaches this process only (a terminal's Ctrl-C,
    `timeout`, or a container's SIGTERM to its first process alike), which passes one SIGTERM on: torchrun
    stops its ranks with it and waits for them, and they stop as one process would (the run's lock released,
    rank 0 saying how to resume). Where the stop signals every process (Slurm), torchrun gets that SIGTERM
    too: its wait, cut by the second one, starts over (torch 2.13's agent shuts down again in a `finally`);
    a third would end it and the ranks midway, so the command sends one only, and the own session keeps a
    terminal's or `timeout`'s signal to the group from adding another. A second Ctrl-C here ends this
    process, and the ranks with it (die_with_parent)."""
    launcher = subprocess.Popen(launch_command(argv, processes), env={**os.environ, "PYTHONSAFEPATH": "1"},
                                start_new_session=True)
    try:
        return launcher.wait()
    except KeyboardInterrupt:
        launcher.terminate()
        launcher.wait()
        return 130


if __name__ == "__main__":     # python -m fastig.app.launcher ACCELERATE-LAUNCH-ARGUMENTS: accelerate launch, tied to us
    die_with_parent()
    from accelerate.commands.launch import main as accelerate_launch

    sys.argv[0] = "accelerate launch"
    accelerate_launch()

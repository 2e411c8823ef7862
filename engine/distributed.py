"""Attribution over several processes with accelerate: the steps of each document, or the documents of a data set.

    accelerate launch --multi_gpu --num_processes N -m fastig attribute ...   (or: fastig attribute ... --processes N)

`fastig attribute` splits every document's integration steps: process r takes steps r, r + N,
r + 2N, ...; the fp32 gradient sums and integrands are summed across processes and the main
process prints and writes. `fastig dataset` splits the documents instead (longest first, dealt
round-robin so each process gets a similar share of tokens); each process writes its own
shards and the main process merges them into the files one process would write. CPU processes
talk over gloo, GPUs over nccl; a collective that waits longer than the timeout fails the run
with an error instead of hanging, and a rank that dies makes the launcher stop the others.
"""

import datetime
import logging
import os
import socket
import subprocess
import sys

import torch

from .errors import InputError

COLLECTIVE_TIMEOUT_S = 600


def launched() -> bool:
    """Whether this process is one of several started by accelerate launch (or torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_state(timeout_s: float = COLLECTIVE_TIMEOUT_S):
    """accelerate's PartialState, its process group initialized with a timeout on every collective;
    over gloo on a machine without GPUs (accelerate's CPU state), over nccl on GPUs."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), timeout=datetime.timedelta(seconds=timeout_s))


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


class StepShare:
    """This process's share of each document's steps, and sums across the processes of the run."""

    def __init__(self, state):
        self.state = state
        self.rank, self.size = state.process_index, state.num_processes

    def steps(self, n_steps: int) -> torch.Tensor:
        return torch.arange(self.rank, n_steps, self.size)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """tensor summed over the processes, in place."""
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def agree(self, count: int) -> int:
        """The smallest of the processes' counts: every process must pack the same documents together."""
        value = torch.tensor([count], dtype=torch.int64, device=self.state.device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
        return int(value)


def launch_command(argv: list[str], processes: int) -> list[str]:
    """The accelerate launch command running `fastig <argv>` in `processes` processes on this machine.

    accelerate's torchrun launcher (--multi_gpu) starts the processes on CPUs too; `--cpu`
    alone starts one process unless an MPI hostfile is configured.
    """
    gpus = torch.cuda.device_count()
    if 0 < gpus < processes:
        raise InputError(f"--processes {processes}: this machine has {gpus} GPUs; give at most {gpus}")
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--main_process_port", str(_free_port()), "--mixed_precision", "no",
            "--dynamo_backend", "no", "-m", "fastig", *argv]


def _free_port() -> int:
    """A port free now: runs started one after the other do not meet on the launcher's default 29500."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def relaunch(argv: list[str], processes: int) -> int:
    """Run `fastig <argv>` under accelerate launch in `processes` processes; its exit code."""
    return subprocess.run(launch_command(argv, processes)).returncode

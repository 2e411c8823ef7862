"""Several processes sharing one attribution: which items each process computes, and the sums over all.

    accelerate launch --multi_gpu --num_processes N -m fastig attribute ...   (or: fastig attribute ... --processes N)

Under a launch, every process builds the same Engine and gives it `AllProcesses(process_state())`:
each document's integration steps (or, with n_steps="auto", its (document, point) pairs) are dealt
round-robin, process r taking items r, r + N, r + 2N, ..., and the fp32 gradient sums, integrands
and outputs are summed across processes, so every process ends with the single-process result.
`OneProcess` is the same interface for a plain run: every item is its own, nothing is exchanged.
CPU processes talk over gloo, GPUs over nccl; a collective that waits longer than the timeout
fails the run with an error instead of hanging.
"""

import datetime
import os

import torch

COLLECTIVE_TIMEOUT_S = 600


def launched() -> bool:
    """Whether this process is one of several started by accelerate launch (or torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_state(timeout_s: float = COLLECTIVE_TIMEOUT_S):
    """accelerate's PartialState, its process group initialized with a timeout on every collective;
    over gloo on a machine without GPUs (accelerate's CPU state), over nccl on GPUs."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), timeout=datetime.timedelta(seconds=timeout_s))


class OneProcess:
    """A run in one process: every item is this process's, the sums are its own."""
    rank, size = 0, 1

    def items(self, count: int) -> torch.Tensor:
        """The indices of the `count` items (steps, or point pairs) this process computes."""
        return torch.arange(self.rank, count, self.size)

    def combine(self, mine: torch.Tensor, index: torch.Tensor, count: int, dim: int = 0) -> torch.Tensor:
        """All `count` items along `dim`, from this process's `mine` at `index` and the others'."""
        return mine

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """tensor summed over the processes, in place."""
        return tensor

    def agree(self, count: int) -> int:
        """The smallest of the processes' counts, so that every process makes the same choice."""
        return count


class AllProcesses(OneProcess):
    """This process's share of the items of a launched run, and sums over all its processes."""

    def __init__(self, state):
        self.state = state
        self.rank, self.size = state.process_index, state.num_processes

    def combine(self, mine: torch.Tensor, index: torch.Tensor, count: int, dim: int = 0) -> torch.Tensor:
        shape = list(mine.shape)
        shape[dim] = count
        every = torch.zeros(shape, dtype=mine.dtype, device=mine.device)
        every.index_copy_(dim, index.to(mine.device), mine)
        return self.sum(every)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def agree(self, count: int) -> int:
        value = torch.tensor([count], dtype=torch.int64, device=self.state.device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
        return int(value)

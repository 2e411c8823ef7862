"""The model step through torch.compile: each transformer layer compiled, forward and backward.

Opt-in (`Engine(compile=...)`, `fastig attribute --compile MODE`), for GPUs, where the compiler
removes kernel launches and unfused elementwise work ("reduce-overhead" replays the step as CUDA
graphs). On the 2-core EPYC it hardly pays: `fastig bench compiled_step --quick` (2-layer
Longformer-base shape, 4,096 tokens) 1.06x the eager step in fp32 and 1.00x in bf16, after 18 s
of compilation; a 4-layer BERT-base step 1.05x in fp32.

Every transformer layer of a model is an instance of one class running one code, so one compiled
graph serves them all (parameters are its inputs); the last layer, computing the first token only,
gets its own. The parameters are frozen during the step: AOTAutograd's backward computes the
gradient of every input that requires one, and the weights' gradients would be half as much work
again as the input gradient IG needs (1.45x the eager step measured on BERT before freezing).
"""

import sys
from contextlib import contextmanager

import torch
from torch import nn

from .errors import InputError
from .models import forwards_shadowed, recomputable_layers
from .options import COMPILE_MODES as MODES


def check_mode(mode: str | None) -> None:
    if mode is not None and mode not in MODES:
        raise InputError(f"compile={mode!r} is unknown; allowed: None (no compilation), {', '.join(MODES)}")


def compilations() -> int:
    """How many graphs torch.compile has made in this process so far: a model call during which this
    grows was (also) compiling, and its time says nothing of the step's speed. Without torch._dynamo
    loaded nothing was compiled (and loading it for the count would cost 1-2 s)."""
    if "torch._dynamo" not in sys.modules:
        return 0
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@contextmanager
def frozen(model: nn.Module):
    """The model's parameters require no gradient inside the block; as they were after."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    for p in parameters:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in parameters:
            p.requires_grad_(True)


@contextmanager
def layers_compiled(model: nn.Module, mode: str):
    """Inside the block each transformer layer runs its current forward (fastig's banded attention or
    first-token layer included) through torch.compile in `mode`, with the parameters frozen.

    Compiled code is kept by torch per code and guards, so entering the block again reuses it; a new
    call size compiles once more, the second one as dynamic shapes (torch's automatic dynamic)."""
    with frozen(model), forwards_shadowed(recomputable_layers(model),
                                          lambda layer: torch.compile(layer.forward, mode=mode)):
        yield

"""Fused kernels of fastig: one file per operation (interpolation, accumulation, finalization),
each with a Triton kernel, its launcher and a torch reference of the same signature.

`interpolate`, `accumulate` and `finalize` below dispatch: the Triton launcher for CUDA
tensors when triton is installed, the torch reference otherwise. FASTIG_KERNELS=triton
forces the launchers (on CPU tensors too, which needs TRITON_INTERPRET=1 set before triton
is imported), FASTIG_KERNELS=torch forces the references. Nothing here imports triton at
import time: the op modules are imported on first use, so CPU-only installs import cleanly.
"""

import importlib
import importlib.util
import os

import torch

from fastig.errors import InputError

CHOICES = ("auto", "triton", "torch")


def backend(device: torch.device) -> str:
    """"triton" or "torch": which implementation runs for tensors on `device`."""
    choice = os.environ.get("FASTIG_KERNELS", "auto")
    if choice not in CHOICES:
        raise InputError(f"FASTIG_KERNELS={choice!r} is not one of {', '.join(CHOICES)}")
    if choice == "auto":
        choice = "triton" if device.type == "cuda" and importlib.util.find_spec("triton") is not None else "torch"
    return choice


MODULES = {"interpolate": "interpolation", "accumulate": "accumulation", "finalize": "finalization"}


def _run(name: str, device: torch.device, *arguments):
    """The op for tensors on `device`, run with no autocast: its sums are fp32 whatever context a caller
    runs in (the Captum drop-in's forward runs in the caller's autocast, as Captum's does; the torch
    reference's matmul in a bf16 autocast failed on its fp32 output)."""
    module = importlib.import_module(f"{__name__}.{MODULES[name]}")
    if backend(device) == "torch":
        op = getattr(module, f"{name}_reference")
    elif module.triton is None:
        raise InputError("FASTIG_KERNELS=triton but triton is not installed: pip install triton, or unset it")
    else:
        op = getattr(module, name)
    with torch.autocast(device.type, enabled=False):
        return op(*arguments)


def interpolate(start, difference, docs, alphas, dtype=torch.float32):
    """z [c, L, H] = start[docs] + alphas * difference[docs]; see engine/kernels/interpolation.py."""
    return _run("interpolate", start.device, start, difference, docs, alphas, dtype)


def accumulate(gradient_sum, integrand, grads, difference, docs, steps, weights) -> None:
    """gradient_sum[docs] += w[steps] * grads and integrand[docs, steps] = <grads, difference[docs]>; see engine/kernels/accumulation.py."""
    _run("accumulate", grads.device, gradient_sum, integrand, grads, difference, docs, steps, weights)


def finalize(difference, gradient_sum):
    """attributions = difference * gradient_sum and their token sums; see engine/kernels/finalization.py."""
    return _run("finalize", difference.device, difference, gradient_sum)

"""The step loop of layer Integrated Gradients: interpolate, run the model, accumulate.

Nothing here knows about tokenizers, files or printing: it integrates the gradient of a
scalar function of the layer output along the straight path from `start` to `end`.
"""

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch

from . import kernels
from .compiled import compilations
from .precision import Precision
from .result import TimeSplit
from .scheduler import PROBE_SEQUENCES, Scheduler, is_out_of_memory

FP32 = Precision("fp32", "cpu")   # the fallback of a low-precision chunk; autocast-free on any device


@dataclass
class PathIntegral:
    """The integrals of G documents' paths.

    difference: [G, L, H] fp32, end - start. gradient_sum: [G, L, H] fp32, sum_k w_k dF/dz(z_k).
    integrand: [G, n_steps] fp32, s_k = <dF/dz(z_k), end - start>, so sum_k w_k s_k = sum(attributions).
    outputs: [G, n_steps] fp32, F(z_k) from the same forward (n_steps="auto" reads exact errors off it).
    sequences_per_call: the chunk sizes the model calls took, in order.
    """
    difference: torch.Tensor
    gradient_sum: torch.Tensor
    integrand: torch.Tensor
    outputs: torch.Tensor
    seconds: TimeSplit = field(default_factory=TimeSplit)
    sequences_per_call: list = field(default_factory=list)
    fallbacks: int = 0          # chunks redone in fp32 after low precision produced inf or nan


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gradient(score_from_layer, z: torch.Tensor, docs: torch.Tensor, precision: Precision,
              targets: int = 1) -> tuple[torch.Tensor, torch.Tensor] | None:
    """dF/dz [T * c, L*H] fp32 and F [T * c] fp32 (target-major) with the model's forward in `precision`;
    None if that gave inf or nan. With T targets the forward runs once and each target's gradient is
    one more backward pass through the same graph."""
    with torch.enable_grad():
        with precision.autocast():
            scores = score_from_layer(z, docs).reshape(len(z), targets).float()
        grads = [torch.autograd.grad(scores[:, t].sum() * precision.score_scale, z, retain_graph=t < targets - 1)[0]
                 for t in range(targets)]
        grads = grads[0] if targets == 1 else torch.cat(grads)     # one target: no copy of [c, L, H]
    grads, scores = grads.reshape(targets * len(z), -1).float(), scores.detach().t().reshape(-1)
    if precision.name == "fp32":
        return grads, scores
    grads /= precision.score_scale
    return (grads, scores) if bool(torch.isfinite(grads).all()) else None


def integrate_path(score_from_layer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   start: torch.Tensor, end: torch.Tensor, alphas: torch.Tensor, weights: torch.Tensor,
                   scheduler: Scheduler, chunk_size: int | None = None, on_chunk: Callable[[int], None] | None = None,
                   precision: Precision = FP32, targets: int = 1) -> PathIntegral:
    """Integrate dF/dz along z(a) = start + a (end - start) for G documents of one length.

    score_from_layer: (z [c, L, H], docs [c] long, which document each row is) -> F [c],
    differentiable in z. start, end: [G, L, H] fp32 layer outputs of baselines and inputs.
    alphas, weights: [n] fp32 quadrature rule. The G * n (document, step) pairs go through
    the model in chunks sized by `scheduler` (or `chunk_size` per call); a chunk that runs
    out of memory is redone in halves. on_chunk: called with the number of pairs done after
    each chunk (progress bars).
    precision: the model's forward runs under its autocast; a chunk whose gradient is not
    finite is redone in fp32 and counted in `fallbacks`.
    targets: T > 1 when score_from_layer gives F [c, T], T targets of each document: one forward
    per (document, step) for all of them. The result then holds G * T paths, document-major
    (path g * T + t is document g's target t), as if each pair were a document of its own.
    """
    device = end.device
    n_docs, length, n_steps = end.shape[0], end.shape[1], len(alphas)
    difference = end - start                                    # [G, L, H]
    # [G * T, L, H]: each (document, target) pair's own
    path_difference = difference.repeat_interleave(targets, 0) if targets > 1 else difference
    flat_difference = path_difference.flatten(1)     # [G * T, L*H], also for G = 0 (a process with no share)
    gradient_sum = torch.zeros_like(flat_difference)
    integrand = torch.empty(n_docs * targets, n_steps, dtype=torch.float32, device=device)
    outputs = torch.empty(n_docs * targets, n_steps, dtype=torch.float32, device=device)
    target_of_row = torch.arange(targets, device=device)[:, None]
    alphas, weights = alphas.to(device), weights.to(device)
    seconds = TimeSplit()
    sizes, fallbacks = [], 0
    size, lo, total = scheduler.sequences_per_call(length, chunk_size), 0, n_docs * n_steps
    while lo < total:
        probing = size is None
        hi = min(lo + (PROBE_SEQUENCES if probing else size), total)
        t0 = time.perf_counter()
        try:
            with scheduler.measured(length, hi - lo) if probing else nullcontext():
                rows = torch.arange(lo, hi, device=device)
                docs, steps = rows // n_steps, rows % n_steps
                z = kernels.interpolate(start, difference, docs, alphas[steps])      # [c, L, H] fp32
                _sync(device)
                t1 = time.perf_counter()
                z.requires_grad_(True)
                graphs = compilations()
                found = _gradient(score_from_layer, z, docs, precision, targets)   # [T c, L*H], [T c] fp32
                if found is None:
                    found = _gradient(score_from_layer, z, docs, FP32, targets)
                    fallbacks += 1
                grads, scores = found
                _sync(device)
        except RuntimeError as error:
            if not is_out_of_memory(error):
                raise
            out_of_memory = True
        else:
            out_of_memory = False
        if out_of_memory:       # outside the handler, so the failed chunk's frames are gone
            z = grads = found = None
            size = scheduler.halve(hi - lo, length)
            continue
        t2 = time.perf_counter()
        compiling = compilations() != graphs
        if not (probing or compiling):     # the probe's time includes its memory measurement
            scheduler.timed(length, hi - lo, t2 - t1)
        paths = (docs * targets + target_of_row).reshape(-1) if targets > 1 else docs   # target-major, as grads
        path_steps = steps.repeat(targets) if targets > 1 else steps
        kernels.accumulate(gradient_sum, integrand, grads, flat_difference, paths, path_steps, weights)
        outputs[paths, path_steps] = scores
        _sync(device)
        seconds.interpolate += t1 - t0
        if compiling:
            seconds.compile += t2 - t1
        else:
            seconds.model += t2 - t1
        seconds.accumulate += time.perf_counter() - t2
        sizes.append(hi - lo)
        if on_chunk is not None:
            on_chunk(hi - lo)
        lo = hi
        size = scheduler.sequences_per_call(length, chunk_size)
    return PathIntegral(path_difference, gradient_sum.view_as(path_difference), integrand, outputs, seconds, sizes,
                        fallbacks)

"""The step loop of layer Integrated Gradients: interpolate, run the model, accumulate.

Nothing here knows about tokenizers, files or printing: it integrates the gradient of a
scalar function of the layer output along the straight path from `start` to `end`.
"""

import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .precision import Precision

FP32 = Precision("fp32", "cpu")   # the fallback of a low-precision chunk; autocast-free on any device


@dataclass
class PathIntegral:
    """gradient_sum: [L, H] fp32, sum_k w_k dF/dz(z_k). integrand: [n_steps] fp32,
    s_k = <dF/dz(z_k), end - start>, so sum_k w_k s_k = sum(attributions)."""
    gradient_sum: torch.Tensor
    integrand: torch.Tensor
    seconds: dict = field(default_factory=dict)
    fallbacks: int = 0          # chunks redone in fp32 after low precision produced inf or nan


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _gradient(score_from_layer, z: torch.Tensor, precision: Precision) -> torch.Tensor | None:
    """dF/dz [c, L*H] fp32 with the model's forward in `precision`; None if that gave inf or nan."""
    with torch.enable_grad():
        with precision.autocast():
            scores = score_from_layer(z)
        (grads,) = torch.autograd.grad(scores.float().sum() * precision.score_scale, z)
    grads = grads.reshape(len(z), -1).float()
    if precision.name == "fp32":
        return grads
    grads /= precision.score_scale
    return grads if bool(torch.isfinite(grads).all()) else None


def integrate_path(score_from_layer: Callable[[torch.Tensor], torch.Tensor],
                   start: torch.Tensor, end: torch.Tensor,
                   alphas: torch.Tensor, weights: torch.Tensor,
                   chunk_size: int, on_chunk: Callable[[int], None] | None = None,
                   precision: Precision = FP32) -> PathIntegral:
    """Integrate dF/dz along z(a) = start + a (end - start).

    score_from_layer: z [c, L, H] -> F [c], differentiable in z.
    start, end: [L, H] fp32 layer outputs of the baseline and the input.
    alphas, weights: [n] fp32 quadrature rule. chunk_size: steps per model call.
    on_chunk: called with the number of steps done after each chunk (progress bars).
    precision: the model's forward runs under its autocast; a chunk whose gradient is not
    finite is redone in fp32 and counted in `fallbacks`.
    """
    device = end.device
    difference = end - start                                    # [L, H]
    gradient_sum = torch.zeros(difference.numel(), dtype=torch.float32, device=device)
    integrand = torch.empty(len(alphas), dtype=torch.float32, device=device)
    alphas, weights = alphas.to(device), weights.to(device)
    seconds = {"model": 0.0, "accumulate": 0.0}
    fallbacks = 0
    for lo in range(0, len(alphas), chunk_size):
        hi = min(lo + chunk_size, len(alphas))
        t0 = time.perf_counter()
        z = (start + alphas[lo:hi].view(-1, *[1] * start.ndim) * difference).requires_grad_(True)   # [c, L, H]
        grads = _gradient(score_from_layer, z, precision)        # [c, L*H] fp32
        if grads is None:
            grads = _gradient(score_from_layer, z, FP32)
            fallbacks += 1
        _sync(device)
        t1 = time.perf_counter()
        gradient_sum.addmv_(grads.t(), weights[lo:hi])
        integrand[lo:hi] = grads @ difference.reshape(-1)
        _sync(device)
        seconds["model"] += t1 - t0
        seconds["accumulate"] += time.perf_counter() - t1
        if on_chunk is not None:
            on_chunk(hi - lo)
    return PathIntegral(gradient_sum.view_as(difference), integrand, seconds, fallbacks)

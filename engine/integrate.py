"""The step loop of layer Integrated Gradients: interpolate, run the model, accumulate.

Nothing here knows about tokenizers, files or printing: it integrates the gradient of a
scalar function of the layer output along the straight path from `start` to `end`.
"""

import time
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class PathIntegral:
    """gradient_sum: [L, H] fp32, sum_k w_k dF/dz(z_k). integrand: [n_steps] fp32,
    s_k = <dF/dz(z_k), end - start>, so sum_k w_k s_k = sum(attributions)."""
    gradient_sum: torch.Tensor
    integrand: torch.Tensor
    seconds: dict = field(default_factory=dict)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def integrate_path(score_from_layer: Callable[[torch.Tensor], torch.Tensor],
                   start: torch.Tensor, end: torch.Tensor,
                   alphas: torch.Tensor, weights: torch.Tensor,
                   chunk_size: int, on_chunk: Callable[[int], None] | None = None) -> PathIntegral:
    """Integrate dF/dz along z(a) = start + a (end - start).

    score_from_layer: z [c, L, H] -> F [c], differentiable in z.
    start, end: [L, H] fp32 layer outputs of the baseline and the input.
    alphas, weights: [n] fp32 quadrature rule. chunk_size: steps per model call.
    on_chunk: called with the number of steps done after each chunk (progress bars).
    """
    device = end.device
    difference = end - start                                    # [L, H]
    gradient_sum = torch.zeros(difference.numel(), dtype=torch.float32, device=device)
    integrand = torch.empty(len(alphas), dtype=torch.float32, device=device)
    alphas, weights = alphas.to(device), weights.to(device)
    seconds = {"model": 0.0, "accumulate": 0.0}
    for lo in range(0, len(alphas), chunk_size):
        hi = min(lo + chunk_size, len(alphas))
        t0 = time.perf_counter()
        z = (start + alphas[lo:hi].view(-1, *[1] * start.ndim) * difference).requires_grad_(True)   # [c, L, H]
        with torch.enable_grad():
            (grads,) = torch.autograd.grad(score_from_layer(z).sum(), z)
        _sync(device)
        t1 = time.perf_counter()
        grads = grads.reshape(hi - lo, -1).float()               # [c, L*H]
        gradient_sum.addmv_(grads.t(), weights[lo:hi])
        integrand[lo:hi] = grads @ difference.reshape(-1)
        _sync(device)
        seconds["model"] += t1 - t0
        seconds["accumulate"] += time.perf_counter() - t1
        if on_chunk is not None:
            on_chunk(hi - lo)
    return PathIntegral(gradient_sum.view_as(difference), integrand, seconds)

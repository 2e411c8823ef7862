"""Quadrature rules on [0, 1]: the alphas and weights Captum uses, as tensors.

The values match `captum.attr._utils.approximation_methods` number for number:
Riemann alphas come from a float32 `torch.linspace`, Gauss-Legendre from numpy's
float64 `leggauss`, and Captum casts the weights to float32 before use.
"""

import numpy as np
import torch

from .errors import MethodError
from .options import METHODS
# numpy's leggauss solves an n x n eigenproblem (O(n^2) memory, O(n^3) time); Riemann rules are O(n).
MAX_STEPS = {"gausslegendre": 4096, "riemann": 1_000_000}


def check_rule(method: str, n_steps) -> None:
    """Raise MethodError unless `method` is known and can integrate with `n_steps` points."""
    if method not in METHODS:
        raise MethodError(f"method={method!r} is unknown; allowed: {', '.join(METHODS)}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)):
        raise MethodError(f"n_steps={n_steps!r} must be a positive integer")
    smallest = 1 if method == "gausslegendre" else 2  # Captum asserts n > 1 for Riemann rules
    if n_steps < smallest:
        raise MethodError(f"n_steps={n_steps} is too small for method={method!r}; it needs n_steps >= {smallest}")
    largest = MAX_STEPS.get(method, MAX_STEPS["riemann"])
    if n_steps > largest:
        raise MethodError(f"n_steps={n_steps} is too large for method={method!r}: at most {largest}"
                          + (" (its nodes come from an n x n eigenproblem: 100,000 points would need 74 GiB)"
                             if method == "gausslegendre" else ""))


def rule(method: str, n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Alphas and weights of `method` with `n_steps` points: two float32 tensors [n_steps]."""
    check_rule(method, n_steps)
    n = int(n_steps)
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        alphas = torch.tensor(0.5 * (1 + nodes), dtype=torch.float32)
        return alphas, torch.tensor(0.5 * weights, dtype=torch.float32)
    weights = torch.full((n,), 1 / n, dtype=torch.float64)
    if method == "riemann_trapezoid":
        weights[0] /= 2
        weights[-1] /= 2
        alphas = torch.linspace(0, 1, n, dtype=torch.float32)
    elif method == "riemann_left":
        alphas = torch.linspace(0, 1 - 1 / n, n, dtype=torch.float32)
    elif method == "riemann_middle":
        alphas = torch.linspace(1 / (2 * n), 1 - 1 / (2 * n), n, dtype=torch.float32)
    else:
        alphas = torch.linspace(1 / n, 1, n, dtype=torch.float32)
    return alphas, weights.float()

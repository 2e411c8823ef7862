"""The default call: integrate until the attribution is within a stated accuracy, in the precision that allows it.

`Engine.attribute(texts)` without n_steps runs this. Its target: each document's attribution
within `accuracy` (default 2e-2) relative L2 error of the converged fp32 result, which on the
tests' and benchmarks' models also keeps the token scores' Pearson correlation with it at
0.999 or more. It gets there with Gauss-Legendre rules in pairs (n, n + 1), n = 4, 8, 16, ...:

- The attribution of the pair's larger rule is the result; the pair's difference estimates the
  smaller rule's error, which bounds the larger's (Gauss-Legendre's error falls by orders of
  magnitude from n to n + 1 on smooth integrands), independently of the convergence delta.
- A document stops when that estimate is within accuracy / 4 and, computed in fp32, its
  convergence delta within accuracy / 20 of |F(x) - F(b)| (1e-3 at the default: the exact error
  of the scalar integral; or 1e-5 of |F(x)| + |F(b)|, fp32's rounding, where F barely changes
  along the path); otherwise the next pair, up to max_steps evaluations.
- Precision: where low precision is fast (see precision.default_path_precision) every document is
  first evaluated at alpha = 1/2, the middle node of every odd rule, in both bf16 and fp32. The
  relative error of bf16's attribution there is the document's precision error; a document whose
  error is within accuracy / 2 runs in bf16, any other in fp32. The fp32 value at 1/2 is the one
  summed. bf16 rounding also shows in the pair's difference, so a bf16 document stops once the
  estimate is within max(accuracy / 4, its precision error / 2): more points would not help.

Measured (2-core EPYC, a 4-layer random Longformer-base at 512 tokens, against 256-point fp32
Gauss-Legendre): Gauss-Legendre at 4 points is within 9.6e-4 and at 8 within 1.8e-6, so the first
pair (9 evaluations with the shared middle point) meets the target; bf16's error there is 1.5e-2
at any n, its attribution at one point 1.7-2.1e-2 off fp32's, which is why CPUs without AMX run
the default in fp32 (bf16 was only 1.4x faster per step there).
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import MethodError
from .precision import Precision
from .result import TimeSplit

FIRST_PAIR = 4              # the smaller rule of the first pair
QUADRATURE_SHARE = 1 / 4    # of the accuracy, for the quadrature's estimated error
DELTA_SHARE = 1 / 20        # of the accuracy, for the fp32 convergence delta relative to |F(x) - F(b)|
# ... or, where F(x) and F(b) nearly agree, this share of |F(x)| + |F(b)|: fp32 rounding of the
# gradients' sum reaches it (a random model of weights of the usual scale: |F(x) - F(b)| ~ 1e-6).
DELTA_FLOOR = 1e-5
PRECISION_SHARE = 1 / 2     # of the accuracy, for low precision's error at alpha = 1/2


def check_accuracy(accuracy: float, max_steps: int) -> None:
    if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) or not 0 < accuracy < 1:
        raise MethodError(f"accuracy={accuracy!r} must be a number between 0 and 1 (the attributions' relative "
                          "L2 error to reach)")
    smallest = 2 * FIRST_PAIR + 1
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < smallest:
        raise MethodError(f"max_steps={max_steps!r} must be an integer of at least {smallest} (the first pair of rules)")


def gauss_legendre(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Alphas and weights [n] fp32 on [0, 1]; an odd rule's middle node is exactly 1/2."""
    nodes, weights = np.polynomial.legendre.leggauss(n)
    alphas = 0.5 * (1 + nodes)
    if n % 2:
        alphas[n // 2] = 0.5
    return torch.tensor(alphas, dtype=torch.float32), torch.tensor(0.5 * weights, dtype=torch.float32)


@dataclass
class TargetedIntegral:
    """The integrals of G documents' paths, each to its accuracy.

    difference, gradient_sum: [G, L, H] fp32 as in PathIntegral (gradient_sum of the accepted rule).
    alphas, integrand: per document, the accepted rule's points and s there. evaluations: model
    evaluations spent per document (all pairs, and the precision check). met: whether the
    accuracy was reached. precision: per document, "fp32" or the low precision it ran in.
    estimated_error: the pair's relative difference. precision_error: low precision's error at
    alpha = 1/2 (None where it was not checked).
    """
    difference: torch.Tensor
    gradient_sum: torch.Tensor
    alphas: list
    integrand: list
    evaluations: list
    met: list
    precision: list
    estimated_error: list
    precision_error: list
    evaluations_allowed: int
    seconds: TimeSplit = field(default_factory=TimeSplit)
    sequences_per_call: list = field(default_factory=list)
    fallbacks: int = 0


def _relative(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a - b|| / ||b|| per document, for [G, L, H] tensors."""
    return (a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1).clamp_min(1e-30)


def integrate_to_accuracy(evaluate, start: torch.Tensor, end: torch.Tensor, f_x: torch.Tensor, f_b: torch.Tensor,
                          accuracy: float, max_steps: int, low: Precision | None, fp32: Precision) -> TargetedIntegral:
    """Integrate each document's path to `accuracy` (see the module's docstring).

    evaluate(docs [J] long, alphas [n], weights [n], precision) -> PathIntegral of those J documents
    of the group with that rule. start, end: [G, L, H]; f_x, f_b: [G] F(x), F(b). low: the low
    precision to try (None: fp32 only).
    """
    n_docs, device = end.shape[0], end.device
    difference, gap = end - start, f_x - f_b
    delta_allowed = torch.maximum(DELTA_SHARE * accuracy * gap.abs(), DELTA_FLOOR * (f_x.abs() + f_b.abs()))
    seconds, sizes, fallbacks = TimeSplit(), [], 0
    evaluations = torch.zeros(n_docs, dtype=torch.long)

    def run(docs, alphas, weights, precision):
        nonlocal fallbacks
        path = evaluate(docs.to(device), alphas, weights, precision)
        seconds.add(path.seconds)
        sizes.extend(path.sequences_per_call)
        fallbacks += path.fallbacks
        evaluations[docs] += len(alphas)
        return path

    every = torch.arange(n_docs)
    middle = run(every, torch.tensor([0.5]), torch.ones(1), fp32)          # dF/dz and s at alpha = 1/2, in fp32
    precision_error = [None] * n_docs
    in_low = torch.zeros(n_docs, dtype=torch.bool)
    if low is not None:
        check = run(every, torch.tensor([0.5]), torch.ones(1), low)
        error = _relative(difference * check.gradient_sum, difference * middle.gradient_sum).cpu()
        precision_error = error.tolist()
        in_low = error <= PRECISION_SHARE * accuracy

    gradient_sum = torch.zeros_like(end)
    alphas_out, integrand_out = [None] * n_docs, [None] * n_docs
    estimated, met = [None] * n_docs, [False] * n_docs
    active, n = every, FIRST_PAIR
    while len(active):
        results = {}                 # the pair's sums of the active documents, by precision
        for docs in (active[in_low[active]], active[~in_low[active]]):
            if not len(docs):
                continue
            precision = low if bool(in_low[docs[0]]) else fp32
            lower = run(docs, *gauss_legendre(n), precision)
            alphas, weights = gauss_legendre(n + 1)
            mid = n // 2
            others = torch.cat([torch.arange(mid), torch.arange(mid + 1, n + 1)])
            upper = run(docs, alphas[others], weights[others], precision)
            rows = docs.to(device)
            upper_sum = upper.gradient_sum + weights[mid].item() * middle.gradient_sum[rows]
            integrand = torch.cat([upper.integrand[:, :mid], middle.integrand[rows], upper.integrand[:, mid:]], 1)
            results[precision.name] = (docs, lower.gradient_sum, upper_sum, integrand, alphas, weights)
        still = []
        for docs, lower_sum, upper_sum, integrand, alphas, weights in results.values():
            rows = docs.to(device)
            pair_error = _relative(difference[rows] * lower_sum, difference[rows] * upper_sum).cpu().tolist()
            delta = (difference[rows] * upper_sum).flatten(1).sum(1) - gap[rows]
            delta_met = (delta.abs() <= delta_allowed[rows]).cpu().tolist()
            for j, d in enumerate(docs.tolist()):
                low_precision = bool(in_low[d])
                allowed = max(QUADRATURE_SHARE * accuracy, precision_error[d] / 2 if low_precision else 0.0)
                done = pair_error[j] <= allowed and (low_precision or delta_met[j])
                gradient_sum[d] = upper_sum[j]
                alphas_out[d], integrand_out[d], estimated[d], met[d] = alphas, integrand[j].cpu(), pair_error[j], done
                if not done and int(evaluations[d]) + 2 * (2 * n) <= max_steps:     # the next pair fits
                    still.append(d)
        active, n = torch.tensor(still, dtype=torch.long), 2 * n
    return TargetedIntegral(difference, gradient_sum, alphas_out, integrand_out, evaluations.tolist(), met,
                            [low.name if bool(in_low[d]) else fp32.name for d in range(n_docs)],
                            estimated, precision_error, max_steps, seconds, sizes, fallbacks)

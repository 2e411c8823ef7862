"""The default call: integrate until the attribution is within a stated accuracy, in the precision that allows it.

`Engine.attribute(texts)` without n_steps, method or precision runs this. Its target: each
document's attributions within `accuracy` (default 2e-2) relative L2 error of the converged fp32
result, which on the tests' and benchmarks' models also keeps the token scores' Pearson
correlation with it at 0.999 or more. It gets there with nested Clenshaw-Curtis rules: levels of
n + 1 points, n = 2, 4, 8, ..., each level's points those of the level before and the midpoints
(in cos-angle) between them, so that no evaluation is ever thrown away:

- The attribution is the last level's rule over all points. The relative difference to the level
  before bounds that level's error, and so the last level's (Clenshaw-Curtis converges about as
  fast as Gauss-Legendre on smooth integrands, and each level doubles the points); where three
  levels show geometric convergence, the estimate is that difference times the ratio of the last
  two differences (at least a tenth of it). The first round evaluates level 8's 9 points at once
  (levels 2 and 4 are in them), so a smooth path costs one round of 9 evaluations.
- A document stops when that estimate is within accuracy / 4 and, computed in fp32, its
  convergence delta within accuracy / 20 of |F(x) - F(b)| (1e-3 at the default: the exact error
  of the scalar integral; or 1e-5 of |F(x)| + |F(b)|, fp32's rounding, where F barely changes
  along the path); otherwise it takes the next level, up to max_steps evaluations.
- Precision: where low precision is fast (see precision.default_path_precision) every document is
  first evaluated at alpha = 1/2, a node of every level, in both bf16 and fp32. The relative error
  of bf16's attribution there is the document's precision error; a document whose error is within
  accuracy / 2 runs in bf16, any other in fp32. The fp32 value at 1/2 is the one used. bf16
  rounding also shows in the levels' difference, so a bf16 document stops once the estimate is
  within max(accuracy / 4, its precision error / 2): more points would not help.

Each point's fp32 gradient [L, H] is held until its document is done (the levels reweight every
point), within half the room the memory budget leaves (Engine._points_allowed).

Measured (2-core EPYC): on a 4-layer random Longformer-base at 512 tokens, Gauss-Legendre at 4
points was within 9.6e-4 of 256 points, and the first round (9 points) meets the target; on the
demo's fine-tuned MiniLM, whose integrand peaks, 50 Gauss-Legendre points were within 5e-7 but 16
only within 1.8e-3-3.6e-2, so it takes 33 points (Gauss-Legendre pairs, which threw their smaller
rule away, took 121-249). bf16's error on the Longformer was 1.5e-2 at any n, its
attribution at one point 1.7-2.1e-2 off fp32's, which is why CPUs without AMX run the default in
fp32 (bf16, 2.1-2.3x faster per step there, is too close to the 2e-2 accuracy).
"""

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch

from .adaptive import AdaptiveIntegral
from .errors import MethodError
from .precision import Precision
from .result import TimeSplit

FIRST_LEVEL = 2             # intervals of the smallest level (3 points: 0, 1/2, 1)
FIRST_ROUND = 8             # the first round evaluates this level's 9 points at once (levels 2 and 4 are in it)
EXTRAPOLATION_FLOOR = 0.1   # the estimate never falls below this share of the last two levels' difference
# Of the accuracy: for the quadrature's estimated error, and for the fp32 convergence delta relative to
# |F(x) - F(b)|. Both are strict on purpose. On the demo's MiniLM (40 held-out reviews, 2026-12-07) the estimate
# at 17 points was 1.15-12x the true error (median 3.7x), and 36 reviews took 33 points, 4 took 65 (true errors
# 6e-7-3e-4); shares of 1/2 and 1 would have stopped 13 at 17 points: 19% fewer evaluations (36.2 -> 29.4 a
# review), for errors up to 4e-3 and a delta allowed 20x larger. Not taken: that delta is the completeness
# users check.
QUADRATURE_SHARE = 1 / 4
DELTA_SHARE = 1 / 20
# ... or, where F(x) and F(b) nearly agree, this share of |F(x)| + |F(b)|: fp32 rounding of the
# gradients' sum reaches it (a random model of weights of the usual scale: |F(x) - F(b)| ~ 1e-6).
DELTA_FLOOR = 1e-5
PRECISION_SHARE = 1 / 2     # of the accuracy, for low precision's error at alpha = 1/2
MIDDLE = Fraction(1, 2)


def check_accuracy(accuracy: float, max_steps: int) -> None:
    if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) or not 0 < accuracy < 1:
        raise MethodError(f"accuracy={accuracy!r} must be a number between 0 and 1 (the attributions' relative "
                          "L2 error to reach)")
    smallest = FIRST_ROUND + 1
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < smallest:
        raise MethodError(f"max_steps={max_steps!r} must be an integer of at least {smallest} (the first round's "
                          "points, whose levels give the first estimate)")


def node(point: Fraction) -> float:
    """The alpha of a Clenshaw-Curtis point k/n (in units of pi): (1 - cos(pi k / n)) / 2. Points are named
    by their reduced fraction, so a point is the same float at every level."""
    return 0.5 * (1 - np.cos(np.pi * point.numerator / point.denominator))


def clenshaw_curtis(n: int) -> tuple[list[Fraction], np.ndarray]:
    """The n + 1 points (as fractions k / n) and float64 weights on [0, 1] of Clenshaw-Curtis with n intervals."""
    k = np.arange(n + 1)
    theta = np.pi * k / n
    j = np.arange(1, n // 2 + 1)
    b = np.where(j == n // 2, 1.0, 2.0)
    sums = (b / (4 * j ** 2 - 1) * np.cos(2 * theta[:, None] * j)).sum(1)
    c = np.where((k == 0) | (k == n), 1.0, 2.0)
    return [Fraction(int(i), n) for i in k], 0.5 * c / n * (1 - sums)


@dataclass
class TargetedIntegral(AdaptiveIntegral):
    """The integrals of G documents' paths, each to its accuracy: AdaptiveIntegral's fields (gradient_sum
    of the last level; alphas and integrand: the last level's points and s there; evaluations: every point
    and the precision check; met: whether the accuracy was reached), and per document the precision it
    ran in ("fp32" or the low one), estimated_error (the levels' estimate, see _estimate) and
    precision_error (low precision's error at alpha = 1/2; None where it was not checked).
    """
    precision: list = field(default_factory=list)
    estimated_error: list = field(default_factory=list)
    precision_error: list = field(default_factory=list)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _levels_to_sum(summed: int, n: int) -> list[int]:
    """The levels (FIRST_LEVEL, 2 FIRST_LEVEL, ... up to n) whose sums a document does not have yet, given
    how many it has: the first round sums three (its points hold the two levels below it)."""
    levels, level = [], FIRST_LEVEL
    while level <= n:
        levels.append(level)
        level *= 2
    return levels[len(levels) - 1:] if summed else levels


def _estimate(attributions: list[torch.Tensor]) -> float:
    """The estimated relative error of the last of a document's level attributions (the last two or three).

    The last two levels' relative difference bounds the error of the one before the last; where the
    levels converge geometrically (that difference against the one before it), the last level's error
    is about the difference times that ratio, never taken below EXTRAPOLATION_FLOOR of it."""
    last = _relative(attributions[-2], attributions[-1])
    if len(attributions) < 3:
        return last
    ratio = last / max(_relative(attributions[-3], attributions[-2]), 1e-30)
    return last * min(1.0, max(EXTRAPOLATION_FLOOR, ratio))


def integrate_to_accuracy(evaluate, start: torch.Tensor, end: torch.Tensor, f_x: torch.Tensor, f_b: torch.Tensor,
                          accuracy: float, max_steps: int, low: Precision | None, fp32: Precision) -> TargetedIntegral:
    """Integrate each document's path to `accuracy` (see the module's docstring).

    evaluate(docs [J] long, alphas [J] fp32, precision) -> PathIntegral of J one-point paths: its
    gradient_sum [J, L, H] is dF/dz at z(alphas[j]) of document docs[j] and integrand [J, 1] is s
    there. start, end: [G, L, H]; f_x, f_b: [G] F(x), F(b). low: the low precision to try (None:
    fp32 only). max_steps: the most points per document.
    """
    n_docs, device = end.shape[0], end.device
    difference, gap = end - start, f_x - f_b
    delta_allowed = torch.maximum(DELTA_SHARE * accuracy * gap.abs(), DELTA_FLOOR * (f_x.abs() + f_b.abs())).tolist()
    seconds, sizes, fallbacks = TimeSplit(), [], 0
    held = [{} for _ in range(n_docs)]      # per document: point -> (dF/dz [L, H], s)
    evaluations = [0] * n_docs

    def run(docs: list, points: list, precision: Precision, keep: bool = True):
        nonlocal fallbacks
        path = evaluate(torch.tensor(docs, device=device), torch.tensor([node(p) for p in points],
                                                                         dtype=torch.float32), precision)
        seconds.add(path.seconds)
        sizes.extend(path.sequences_per_call)
        fallbacks += path.fallbacks
        for j, (d, point) in enumerate(zip(docs, points)):
            evaluations[d] += 1
            if keep:
                held[d][point] = (path.gradient_sum[j], float(path.integrand[j, 0]))
        return path

    every = list(range(n_docs))
    precision_error, in_low = [None] * n_docs, [False] * n_docs
    if low is not None:     # alpha = 1/2 (in every level) in fp32, then in low precision, compared, not kept
        run(every, [MIDDLE] * n_docs, fp32)
        check = run(every, [MIDDLE] * n_docs, low, keep=False)
        for d in every:
            precision_error[d] = _relative(difference[d] * check.gradient_sum[d], difference[d] * held[d][MIDDLE][0])
            in_low[d] = precision_error[d] <= PRECISION_SHARE * accuracy
        check = None

    gradient_sum = torch.zeros_like(end)
    sums = [[] for _ in range(n_docs)]      # per document: its levels' sums so far, the last three kept
    alphas_out, integrand_out = [None] * n_docs, [None] * n_docs
    estimated, met = [None] * n_docs, [False] * n_docs
    active, n = every, FIRST_ROUND
    while active:
        points, weights = clenshaw_curtis(n)
        for precision, docs in ((low, [d for d in active if in_low[d]]), (fp32, [d for d in active if not in_low[d]])):
            new = [(d, p) for d in docs for p in points if p not in held[d]]
            if new:
                run([d for d, _ in new], [p for _, p in new], precision)
        still = []
        for d in active:
            for level in _levels_to_sum(len(sums[d]), n):
                level_points, level_weights = clenshaw_curtis(level)
                sums[d] = (sums[d] + [sum(float(w) * held[d][p][0] for p, w in zip(level_points, level_weights))])[-3:]
            estimated[d] = _estimate([difference[d] * total for total in sums[d]])
            delta = float((difference[d] * sums[d][-1]).sum() - gap[d])
            allowed = max(QUADRATURE_SHARE * accuracy, precision_error[d] / 2 if in_low[d] else 0.0)
            met[d] = estimated[d] <= allowed and (in_low[d] or abs(delta) <= delta_allowed[d])
            alphas_out[d] = torch.tensor([node(p) for p in points], dtype=torch.float32)
            integrand_out[d] = torch.tensor([held[d][p][1] for p in points], dtype=torch.float32)
            if not met[d] and 2 * n + 1 <= max_steps:    # the next level fits
                still.append(d)
        active, n = still, 2 * n
    for d in every:
        gradient_sum[d] = sums[d][-1]
        held[d].clear()                     # the held gradients go as soon as the group is summed
    return TargetedIntegral(difference, gradient_sum, alphas_out, integrand_out, evaluations, met, seconds, sizes,
                            fallbacks, evaluations_allowed=max_steps,
                            precision=[low.name if in_low[d] else fp32.name for d in every],
                            estimated_error=estimated, precision_error=precision_error)

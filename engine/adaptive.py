"""n_steps="auto": adaptive quadrature that stops when the convergence delta meets a tolerance.

The delta is the exact error of the scalar integral of s(alpha) = <dF/dz(z(alpha)), e(x) - e(b)>,
since F(x) - F(b) is known, and the step loop gets s at every point it evaluates. So:

1. Gauss-Legendre with 7 points on [0, 1]; stop if |delta| <= tolerance * |F(x) - F(b)|.
2. Otherwise Gauss-Kronrod 15 on [0, 1] (the 7 Gauss points are evaluated again: the vector
   accumulator of step 1 holds them with the Gauss weights, not the Kronrod ones).
3. While the tolerance is not met and max_steps allows, bisect the subinterval whose error
   estimate |K15 - G7| is largest, K15 on each half.

Each subinterval keeps its own fp32 accumulator (its K15-weighted gradient sum), so no point is
evaluated twice within step 3 and the attribution uses the final partition's weights. A round
evaluates every (document, subinterval) pair of the group in one pass of the step loop: the
pair's path runs from z(a) to z(b) with the K15 nodes on [0, 1], which is the subinterval's rule
scaled by (b - a). Chunking, packing, memory budget, precision and step splitting over
processes apply to each round as to a uniform rule.
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import MethodError

GAUSS_POINTS = 7
# Kronrod extension of the 7-point Gauss rule on [-1, 1] (QUADPACK's qk15), nodes >= 0 and weights.
_KRONROD_NODES = [0.991455371120812639206854697526329, 0.949107912342758524526189684047851,
                  0.864864423359769072789712788640926, 0.741531185599394439863864773280788,
                  0.586087235467691130294144845693013, 0.405845151377397166906606412076961,
                  0.207784955007898467600689403773245, 0.000000000000000000000000000000000]
_KRONROD_WEIGHTS = [0.022935322010529224963732008058970, 0.063092092629978553290700663189204,
                    0.104790010322250183839876322541518, 0.140653259715525918745189590510238,
                    0.169004726639267902826583426598550, 0.190350578064785409913256402421014,
                    0.204432940075298892414161999234649, 0.209482141084727828012999174891714]
_GAUSS_WEIGHTS = [0.129484966168869693270611432679082, 0.279705391489276667901467771423780,
                  0.381830050505118944950369775488975, 0.417959183673469387755102040816327]


def _kronrod_rule():
    """K15 nodes and weights on [0, 1], and the G7 weights at nodes 1, 3, ..., 13 (the Gauss points)."""
    nodes = np.array([-x for x in _KRONROD_NODES[:-1]] + _KRONROD_NODES[::-1])
    weights = np.array(_KRONROD_WEIGHTS[:-1] + _KRONROD_WEIGHTS[::-1])
    gauss = np.zeros(15)
    gauss[1::2] = _GAUSS_WEIGHTS[:-1] + _GAUSS_WEIGHTS[::-1]
    as_tensor = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    return as_tensor(0.5 * (nodes + 1)), as_tensor(0.5 * weights), as_tensor(0.5 * gauss)


KRONROD_ALPHAS, KRONROD_WEIGHTS, GAUSS_IN_KRONROD = _kronrod_rule()


def check_auto(tolerance: float, max_steps: int) -> None:
    if not (isinstance(tolerance, (int, float)) and 0 < tolerance < 1):
        raise MethodError(f"tolerance={tolerance!r} must be a number between 0 and 1 (a share of |F(x) - F(b)|)")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < GAUSS_POINTS:
        raise MethodError(f"max_steps={max_steps!r} must be an integer of at least {GAUSS_POINTS}")


@dataclass
class AdaptiveIntegral:
    """The integrals of G documents' paths, each on its own final set of points.

    difference, gradient_sum: [G, L, H] fp32 as in PathIntegral. alphas, integrand: per
    document, the points of its final rule and s there (sorted by alpha). evaluations: model
    evaluations per document (all rounds). met: whether the tolerance was reached.
    """
    difference: torch.Tensor
    gradient_sum: torch.Tensor
    alphas: list
    integrand: list
    evaluations: list
    met: list
    seconds: dict = field(default_factory=dict)
    sequences_per_call: list = field(default_factory=list)
    fallbacks: int = 0


@dataclass
class _Leaf:
    a: float
    b: float
    accumulator: torch.Tensor      # [L, H] fp32: (b - a) * sum_k w_k dF/dz at the K15 points
    estimate: float                # K15 estimate of the integral of s over [a, b]
    error: float                   # |K15 - G7|
    alphas: torch.Tensor
    integrand: torch.Tensor


def integrate_adaptive(run_path, start: torch.Tensor, end: torch.Tensor, gap: torch.Tensor, tolerance: float,
                       max_steps: int) -> AdaptiveIntegral:
    """Integrate each document's path until |delta| <= tolerance * |gap| or max_steps evaluations.

    run_path(job_start, job_end, job_docs, alphas, weights) -> PathIntegral runs the step loop for
    pairs (job_start[j] -> job_end[j]) of the group's documents job_docs[j]. gap: [G] F(x) - F(b).
    """
    n_docs = end.shape[0]
    difference = end - start
    gap = gap.double().cpu()
    seconds, sizes, fallbacks = {}, [], 0

    def run(job_docs: list[int], spans: list[tuple[float, float]], alphas, weights):
        nonlocal fallbacks
        index = torch.tensor(job_docs, device=end.device)
        a = torch.tensor([s[0] for s in spans], device=end.device)[:, None, None]
        b = torch.tensor([s[1] for s in spans], device=end.device)[:, None, None]
        path = run_path(start[index] + a * difference[index], start[index] + b * difference[index], index,
                        alphas, weights)
        for key, value in path.seconds.items():
            seconds[key] = seconds.get(key, 0.0) + value
        sizes.extend(path.sequences_per_call)
        fallbacks += path.fallbacks
        return path

    # 1. Gauss-Legendre 7 on [0, 1].
    gauss_alphas, gauss_weights = (torch.tensor(x, dtype=torch.float32) for x in np.polynomial.legendre.leggauss(7))
    gauss_alphas, gauss_weights = 0.5 * (gauss_alphas + 1), 0.5 * gauss_weights
    first = run(list(range(n_docs)), [(0.0, 1.0)] * n_docs, gauss_alphas, gauss_weights)
    estimates = (first.integrand.double().cpu() * gauss_weights.double()).sum(1)
    met = [bool(abs(estimates[d] - gap[d]) <= tolerance * abs(gap[d])) for d in range(n_docs)]
    evaluations = [GAUSS_POINTS] * n_docs
    gradient_sum = first.gradient_sum.clone()
    alphas_out = [gauss_alphas.clone() for _ in range(n_docs)]
    integrand_out = [first.integrand[d].float().cpu() for d in range(n_docs)]

    # 2 and 3. Gauss-Kronrod 15 on [0, 1], then bisection of the worst subintervals.
    leaves = {d: [] for d in range(n_docs) if not met[d]}
    proposals = {d: [(0.0, 1.0)] for d in leaves}
    while proposals:
        jobs = [(d, span) for d, spans in proposals.items() for span in spans]
        path = run([d for d, _ in jobs], [span for _, span in jobs], KRONROD_ALPHAS, KRONROD_WEIGHTS)
        integrand = path.integrand.double().cpu()
        for j, (d, (a, b)) in enumerate(jobs):
            width = b - a
            leaves[d] = [leaf for leaf in leaves[d] if not (leaf.a <= a and b <= leaf.b and (leaf.a, leaf.b) != (a, b))]
            scaled = integrand[j]           # <dF/dz, z(b) - z(a)> = (b - a) s(alpha) at the nodes
            estimate = float((scaled * KRONROD_WEIGHTS.double()).sum())
            error = abs(estimate - float((scaled * GAUSS_IN_KRONROD.double()).sum()))
            leaves[d].append(_Leaf(a, b, path.gradient_sum[j] * width, estimate, error,
                                   a + width * KRONROD_ALPHAS, (scaled / width).float()))
            evaluations[d] += len(KRONROD_ALPHAS)
        proposals = {}
        for d, doc_leaves in leaves.items():
            estimate = sum(leaf.estimate for leaf in doc_leaves)
            met[d] = abs(estimate - float(gap[d])) <= tolerance * abs(float(gap[d]))
            if met[d]:
                continue
            if evaluations[d] + 2 * len(KRONROD_ALPHAS) <= max_steps:
                # One subinterval per round: the exact delta is checked after each, and splitting more
                # at once cost up to 4x the evaluations on oscillating integrands (tiny DistilBERT).
                leaf = max(doc_leaves, key=lambda leaf: leaf.error)
                middle = (leaf.a + leaf.b) / 2
                proposals[d] = [(leaf.a, middle), (middle, leaf.b)]
    for d, doc_leaves in leaves.items():
        doc_leaves.sort(key=lambda leaf: leaf.a)
        gradient_sum[d] = torch.stack([leaf.accumulator for leaf in doc_leaves]).sum(0)
        alphas_out[d] = torch.cat([leaf.alphas.cpu() for leaf in doc_leaves])
        integrand_out[d] = torch.cat([leaf.integrand for leaf in doc_leaves])
    return AdaptiveIntegral(difference, gradient_sum, alphas_out, integrand_out, evaluations, met, seconds, sizes,
                            fallbacks)

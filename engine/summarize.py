"""From attributions [L, H] to what people read: token scores and top/bottom tokens."""

from dataclasses import dataclass

import torch


def token_scores(attributions: torch.Tensor) -> torch.Tensor:
    """The seed notebook's summarize_attributions: sum over hidden, divide by the L2 norm.

    attributions: [..., L, H] -> [..., L]; an all-zero row stays zero.
    """
    return normalized(attributions.sum(dim=-1))


def normalized(sums: torch.Tensor) -> torch.Tensor:
    """Token sums [..., L] divided by their L2 norm over L; all zeros stay zero."""
    norm = torch.linalg.vector_norm(sums, dim=-1, keepdim=True)
    return sums / torch.where(norm > 0, norm, torch.ones_like(norm))


@dataclass(frozen=True)
class RankedToken:
    position: int
    token: str
    score: float


def top_bottom(tokens: list[str], scores: torch.Tensor, k: int = 20) -> tuple[list[RankedToken], list[RankedToken]]:
    """The k highest and the k lowest scoring tokens, each with its position, best first / worst first."""
    k = min(k, len(tokens))
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    ranked = [RankedToken(i, tokens[i], float(scores[i])) for i in order]
    return ranked[:k], ranked[::-1][:k]

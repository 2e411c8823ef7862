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


def top_bottom(tokens: list[str], scores: torch.Tensor, k: int = 20, leave_out=(),
               unique: bool = True) -> tuple[list[RankedToken], list[RankedToken]]:
    """The k highest and the k lowest scoring tokens, each with its position, best first / worst first.

    leave_out: positions not ranked (special tokens); tokens that show nothing ("") are not
    ranked either. unique: each token text once, at its highest (top) or lowest (bottom) score.
    """
    order = [i for i in torch.argsort(scores, descending=True, stable=True).tolist()
             if i not in set(leave_out) and tokens[i]]

    def first_k(positions):
        ranked, seen = [], set()
        for i in positions:
            if len(ranked) == k:
                break
            if not unique or tokens[i] not in seen:
                seen.add(tokens[i])
                ranked.append(RankedToken(i, tokens[i], float(scores[i])))
        return ranked
    return first_k(order), first_k(order[::-1])

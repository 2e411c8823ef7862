"""From attributions [L, H] to what people read: token scores and top/bottom tokens."""

from dataclasses import dataclass
from numbers import Integral

import torch

from .errors import InputError


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


def ends(ranking: list, score, k: int, key=None) -> tuple[list, list]:
    """The two ends of `ranking` (ordered highest score first): up to k items of positive score, highest first,
    and up to k of negative score, lowest first; with `key`, each key once, at its highest (lowest) score.

    An end holds only items of its sign: the two ends of a plain ranking of fewer than 2k items share its
    middle, so that a short text showed its tokens in both lists and, where nearly all scores are positive,
    tokens pushing toward the class among those "away from" it. An end may hold fewer than k items.
    """
    if isinstance(k, bool) or not isinstance(k, Integral) or k < 0:     # a negative k never filled an end: all items
        raise InputError(f"k={k!r} must be an integer of 0 or more (items at each end)")

    def end(items):
        kept, seen = [], set()
        for item in items:
            if len(kept) == k:
                break
            if key is not None:
                if key(item) in seen:
                    continue
                seen.add(key(item))
            kept.append(item)
        return kept
    return end(x for x in ranking if score(x) > 0), end(x for x in reversed(ranking) if score(x) < 0)


def top_bottom(tokens: list[str], scores: torch.Tensor, k: int = 20, leave_out=(),
               unique: bool = True) -> tuple[list[RankedToken], list[RankedToken]]:
    """The k highest positive and the k lowest negative scoring tokens (`ends`), each with its position,
    best first / worst first.

    leave_out: positions not ranked (special tokens); tokens that show nothing ("") are not
    ranked either. unique: each token text once, at its highest (top) or lowest (bottom) score.
    """
    values, left_out = scores.tolist(), set(leave_out)
    order = [i for i in torch.argsort(scores, descending=True, stable=True).tolist() if i not in left_out and tokens[i]]
    top, bottom = ends(order, values.__getitem__, k, tokens.__getitem__ if unique else None)
    return ([RankedToken(i, tokens[i], values[i]) for i in top], [RankedToken(i, tokens[i], values[i]) for i in bottom])

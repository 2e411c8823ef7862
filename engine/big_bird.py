"""BigBird's block-sparse attention, run as the model runs a document alone.

Two things of transformers' BigBird (5.25) that attribution must not inherit:

- At a call of at most (5 + 2 * num_random_blocks) * block_size tokens (704 for bigbird-roberta-base) the
  model switches itself to full attention, and stays switched: every later document, however long, then
  runs full attention, another function than block-sparse (and quadratic memory). So within an attribution
  documents share model calls only with those on the same side of that length (`attention_kind`), and the
  model gets its own attention type back when the attribution ends (`block_sparse_kept`): a document's
  attributions are the ones it gets alone on the model as given, whatever ran before it.
- Under autocast (bf16, fp16) its block-sparse attention fails ("scatter(): Expected self.dtype to be equal
  to src.dtype": the attention weights come out of autocast's softmax in fp32, the probabilities it writes
  them into have the matmuls' bf16). There the attention's core runs in fp32 (`block_sparse_kept`); the
  query, key and value projections, most of the layer's work, stay in low precision.
"""

import logging
from contextlib import contextmanager

import torch
from torch import nn

from .models import forwards_shadowed


def _switching_model(model: nn.Module) -> nn.Module | None:
    """The base model that switches itself to full attention (BigBirdModel), when it runs block-sparse now."""
    base = getattr(model, "base_model", model)
    if getattr(base, "attention_type", None) == "block_sparse" and hasattr(base, "set_attention_type"):
        return base
    return None


def full_attention_limit(model: nn.Module) -> int | None:
    """The length up to which a block-sparse BigBird runs full attention (None: any other model)."""
    if _switching_model(model) is None:
        return None
    return (5 + 2 * model.config.num_random_blocks) * model.config.block_size


def attention_kind(limit: int | None, length: int) -> str | None:
    """Which attention a document of `length` tokens gets alone: "full" or "block_sparse" (None: no choice)."""
    if limit is None:
        return None
    return "full" if length <= limit else "block_sparse"


def _attention_in_fp32(attend):
    def attend_in_fp32(query, key, value, *args, **kwargs):
        device = query.device.type
        if not torch.is_autocast_enabled(device):
            return attend(query, key, value, *args, **kwargs)
        with torch.autocast(device, enabled=False):
            return attend(query.float(), key.float(), value.float(), *args, **kwargs)
    return attend_in_fp32


@contextmanager
def block_sparse_kept(model: nn.Module):
    """Inside: block-sparse attention cores in fp32 under autocast; after: the model's attention type as it was."""
    base = _switching_model(model)
    if base is None:
        yield
        return
    cores = [m for m in model.modules() if hasattr(m, "bigbird_block_sparse_attention")]
    # Its warnings at every call ("padded to be a multiple of block_size", "Changing attention type to
    # 'original_full'") say what fastig takes care of, once a group.
    log = logging.getLogger(type(base).__module__)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with forwards_shadowed(cores, lambda core: _attention_in_fp32(core.bigbird_block_sparse_attention),
                               method="bigbird_block_sparse_attention"):
            yield
    finally:
        log.setLevel(level)
        base.set_attention_type("block_sparse")

"""Longformer's self-attention as banded attention: the same function, without the bookkeeping.

Hugging Face's LongformerSelfAttention builds overlapping diagonal chunks with copies and
fills (on the 2-core EPYC, aten::copy_ 26%, fill_ 18% and bmm 26% of a step). Here the local
attention (each token attends the tokens within the one-sided window w, and the global
tokens) runs as one attention call, by one of two kernels:

- "blocks": each block of w queries attends the 3w keys around it plus the global keys,
  through one scaled_dot_product_attention over all blocks (any device, any dtype);
- "flex": FlexAttention with a sliding-window + global block mask, compiled (CUDA only:
  FlexAttention has no backward pass on CPU, and attribution needs input gradients).

Global queries attend everything through the global projections, as in Hugging Face. Eval
mode only (no dropout); outputs equal Hugging Face's to fp32 rounding.
"""

import logging
import math
from contextlib import contextmanager
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError
from .models import forwards_shadowed

KERNELS = ("blocks", "flex")


class GlobalTokens(NamedTuple):
    """The global tokens of a batch: is_global [B, L]; index [B, G] their positions, first
    the real ones in order, then filler where a row has fewer than G; valid [B, G] which are real."""
    is_global: torch.Tensor
    index: torch.Tensor
    valid: torch.Tensor


def global_tokens_of(is_index_global_attn: torch.Tensor) -> GlobalTokens | None:
    """The global tokens of a batch, from is_index_global_attn [B, L] bool; None when it has none."""
    count = int(is_index_global_attn.sum(1).max())
    if count == 0:
        return None
    order = torch.sort(is_index_global_attn.int(), dim=1, descending=True, stable=True)
    return GlobalTokens(is_index_global_attn, order.indices[:, :count], order.values[:, :count].bool())


def default_kernel(device: torch.device) -> str:
    """"blocks" on every device: on the H200 it ran the 12-layer step 1.8-2.1x faster than "flex" in fp32
    and 1.0-1.17x in bf16 (benchmarks/results/nvidia-h200-full-model_step-2026-11-26.md)."""
    return "blocks"


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.view(*x.shape[:-1], heads, -1)                  # [B, L, E] -> [B, L, heads, d]


def blocks_mask(attention_mask: torch.Tensor, global_tokens: GlobalTokens | None, w: int,
                dtype: torch.dtype) -> torch.Tensor:
    """The additive mask [B * blocks, 1, w, G + 3w] of `blocks_local_attention`: query row s of block b sees
    the global keys first, then key slot t of its span (positions b*w - w + t) when |i - j| <= w."""
    batch, length = attention_mask.shape
    blocks, device = length // w, attention_mask.device
    offsets = torch.arange(3 * w, device=device)
    rows = torch.arange(w, device=device)
    distance = offsets[None, :] - rows[:, None]                 # key slot t, query row s: j - i = t - s - w
    in_band = (distance >= 0) & (distance <= 2 * w)             # |i - j| <= w
    positions = torch.arange(blocks, device=device)[:, None] * w - w + offsets    # [blocks, 3w]
    inside = (positions >= 0) & (positions < length)
    lowest = torch.finfo(dtype).min
    # Padding and global keys leave the window (global keys come back as global columns), as in Hugging Face.
    removed = F.pad(attention_mask != 0, (w, w), value=True).unfold(1, 3 * w, w)        # [B, blocks, 3w]
    key_mask = torch.where(inside, torch.where(removed, lowest, 0.0), -math.inf).to(dtype)
    mask = torch.where(in_band, key_mask[:, :, None, :], -math.inf)                     # [B, blocks, w, 3w]
    if global_tokens is not None:
        global_mask = torch.where(global_tokens.valid, 0.0, -math.inf).to(dtype)        # [B, G]
        mask = torch.cat([global_mask[:, None, None, :].expand(-1, blocks, w, -1), mask], dim=-1)
    # Rows start at multiples of 8 values, sliced from a wider buffer: CUDA's memory-efficient attention pads a
    # copy of any other mask at every call (torch's preprocess_mask), a copy per layer kept for its backward
    # (G + 3w = 769 with one global token: 25 MB a layer at 4 x 4,096 tokens in bf16). Once per forward here.
    # The CPU kernel reads strided rows as they are: its forward and backward at 4,096 tokens took the same time
    # either way on the 2-core EPYC (within 2%, both dtypes, 9 alternated runs).
    keys = mask.shape[-1]
    return F.pad(mask, (0, -keys % 8)).reshape(batch * blocks, 1, w, -1)[..., :keys]


def blocks_local_attention(query: torch.Tensor, key_value: torch.Tensor, global_tokens: GlobalTokens | None,
                           mask: torch.Tensor, w: int, scale: float) -> torch.Tensor:
    """Local attention [B, L, h, d] of query [B, L, h, d] and keys and values key_value [B, L, 2, h, d], by
    blocks of w queries, under `blocks_mask`."""
    batch, length, heads, head_dim = query.shape
    blocks = length // w

    # Keys and values of block b: the global ones, then positions b*w - w ... b*w + 2w - 1 from key_value padded
    # by w at both ends, as the padded blocks b, b+1, b+2 side by side: unfold(1, 3w, w)'s values, with the bf16
    # step 4-4.5% faster on the 2-core EPYC (2-layer LF-base, 4,096 x 1 and 512 x 8 tokens, 3 alternated runs
    # each). The global keys go in the same cat, not in a second copy of the spans: 22 -> 16 ms per K or V (fp32,
    # 4,096 tokens, forward and backward, on a 2-core AMX Xeon of this kind) alone, within noise (1%) of the
    # whole step, one span copy less of memory. Keys and values together: one pad, gather and cat for both.
    padded = F.pad(key_value, (0, 0, 0, 0, 0, 0, w, w)).view(batch, blocks + 2, w, 2, heads, head_dim)
    pieces = [padded[:, :-2], padded[:, 1:-1], padded[:, 2:]]
    if global_tokens is not None:
        index = global_tokens.index[:, :, None, None, None].expand(-1, -1, 2, heads, head_dim)
        pieces.insert(0, key_value.gather(1, index)[:, None].expand(-1, blocks, -1, -1, -1, -1))
    # unbind, not two selects: its backward is one stack, a select's writes zeros over all of the spans.
    key_spans, value_spans = torch.cat(pieces, dim=2).unbind(3)             # [B, blocks, G + 3w, h, d] each
    flat = lambda x: x.transpose(2, 3).flatten(0, 1)       # noqa: E731  [B, blocks, n, h, d] -> [B * blocks, h, n, d]
    query_blocks = query.view(batch, blocks, w, heads, head_dim)
    output = F.scaled_dot_product_attention(flat(query_blocks), flat(key_spans), flat(value_spans),
                                            attn_mask=mask, scale=scale)
    return output.view(batch, blocks, heads, w, head_dim).transpose(2, 3).reshape(batch, length, heads, head_dim)


_compiled_flex = {}      # torch.compile(flex_attention), made on first use on CUDA


def flex_mask(attention_mask: torch.Tensor, global_tokens: GlobalTokens | None, w: int, dtype: torch.dtype):
    """The BlockMask of `flex_local_attention`: key j is seen by query i when |i - j| <= w and j is neither
    padding nor global, or when j is global; padding queries also see themselves (their output is zeroed
    later, and a row with no key at all would give nan gradients)."""
    from torch.nn.attention.flex_attention import create_block_mask

    batch, length = attention_mask.shape
    removed = attention_mask != 0
    is_global = global_tokens.is_global if global_tokens is not None else torch.zeros_like(removed)

    def sees(b, h, q, k):
        return (((q - k).abs() <= w) & ~removed[b, k]) | is_global[b, k] | (q == k)
    return create_block_mask(sees, batch, None, length, length, device=attention_mask.device)


def flex_local_attention(query: torch.Tensor, key_value: torch.Tensor, global_tokens: GlobalTokens | None, mask,
                         w: int, scale: float) -> torch.Tensor:
    """Local attention [B, L, h, d] as `blocks_local_attention`, by FlexAttention under `flex_mask`."""
    from torch.nn.attention.flex_attention import flex_attention

    if query.is_cuda and not _compiled_flex:
        _compiled_flex["flex_attention"] = torch.compile(flex_attention)
    # Uncompiled, FlexAttention is a slow reference (it forms all L x L scores): the CPU's case, forward only.
    kernel = _compiled_flex["flex_attention"] if query.is_cuda else flex_attention
    key, value = key_value.unbind(2)
    output = kernel(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), block_mask=mask, scale=scale)
    return output.transpose(1, 2)


class LocalAttention(NamedTuple):
    mask: Callable          # (attention_mask, global tokens, w, dtype) -> the kernel's mask
    attend: Callable        # (query, key_value, global tokens, mask, w, scale) -> output [B, L, h, d]


LOCAL_ATTENTIONS = {"blocks": LocalAttention(blocks_mask, blocks_local_attention),
                    "flex": LocalAttention(flex_mask, flex_local_attention)}


class Band(NamedTuple):
    """What the layers of one forward with one attention window share: the global tokens (None without),
    and the local-attention kernel ("blocks", "flex") with its mask."""
    global_tokens: GlobalTokens | None
    kernel: str
    mask: object


class BandsOfForward:
    """The bands of the forward now running, one per attention window, built by `build` (a forward pre-hook
    on the encoder) before its layers run, which only read them.

    Once per forward, not per layer: one device-to-host read of the number of global tokens instead of one a
    layer (each a sync on a GPU) and 45 fewer ops per layer (a 4-layer bf16 step: 1,623 -> 1,488 ops, 6 -> 3
    syncs; at a size where the step is all dispatch, 20.9 -> 19.7 ms on a 2-core AMX Xeon of this kind).
    Outside the layers, so that a compiled layer (fastig.compiled) is one graph: built inside it, the number
    of global tokens read off the data broke each layer's graph in two. A backward pass that recomputes the
    layers (fastig.models.layers_recomputed) reads the bands of the last forward: its own, in fastig's steps.
    """

    def __init__(self, kernel: str | None, windows: set[int]):
        self.kernel, self.windows, self.bands = kernel, windows, {}

    def build(self, encoder: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden_states = args[0] if args else kwargs["hidden_states"]
        attention_mask = kwargs["attention_mask"] if "attention_mask" in kwargs else args[1]
        device_type = hidden_states.device.type
        # The dtype of the layers' queries: autocast's, else the model's.
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) \
            else hidden_states.dtype
        global_tokens = global_tokens_of(attention_mask > 0)
        kernel = self.kernel or default_kernel(hidden_states.device)
        mask_of = LOCAL_ATTENTIONS[kernel].mask
        self.bands = {w: Band(global_tokens, kernel, mask_of(attention_mask, global_tokens, w, dtype))
                      for w in self.windows}


def global_attention(attention: nn.Module, hidden_states: torch.Tensor, is_index_masked: torch.Tensor,
                     global_index: torch.Tensor) -> torch.Tensor:
    """The self-attention output [B, G, E] of the tokens at global_index [B, G]: each attends every
    token that is not padding (is_index_masked [B, L]) through the global projections, as in Hugging Face."""
    batch, count = global_index.shape
    heads, head_dim = attention.num_heads, attention.head_dim
    scale = 1 / math.sqrt(head_dim)
    global_hidden = hidden_states.gather(1, global_index[:, :, None].expand(-1, -1, hidden_states.shape[-1]))
    global_query = _heads(attention.query_global(global_hidden) * scale, heads).transpose(1, 2)   # [B, h, G, d]
    # q . (W_k h_j + b_k) = (W_k^T q) . h_j + q . b_k and sum_j p_j (W_v h_j + b_v) = W_v (sum_j p_j h_j) + b_v:
    # the global projections of all L tokens (2 L E^2 per layer, 14% of a layer's matmuls) are never formed.
    # q . b_k is the same for every key j, and a softmax does not change when all its scores move alike: it
    # is left out.
    key_weight = attention.key_global.weight.view(heads, head_dim, -1)                       # [h, d, E]
    folded_query = torch.einsum("bhgd,hde->bhge", global_query, key_weight)                  # [B, h, G, E]
    # Heads and global tokens as one dimension of h*G rows against the [B, L, E] hidden states: a matmul
    # broadcast over heads instead ([B, h, G, E] @ [B, 1, E, L]) has a backward that forms [B, h, E, L]
    # outer products and sums them over h: 20% of a 4-layer 2,048-token step, and 13% in their copies.
    rows = heads * count
    scores = torch.bmm(folded_query.reshape(batch, rows, -1), hidden_states.transpose(1, 2))   # [B, h*G, L]
    scores = scores.masked_fill(is_index_masked[:, None, :], torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype)
    mixed = torch.bmm(probs, hidden_states).view(batch, heads, count, -1)                    # [B, h, G, E]
    value_weight = attention.value_global.weight.view(heads, head_dim, -1)
    global_output = torch.einsum("bhge,hde->bhgd", mixed, value_weight) + \
        attention.value_global.bias.view(heads, 1, head_dim)
    return global_output.transpose(1, 2).reshape(batch, count, -1)


def banded_self_attention(attention: nn.Module, hidden_states: torch.Tensor, is_index_masked: torch.Tensor,
                          band: Band) -> torch.Tensor:
    """LongformerSelfAttention.forward's output [B, L, E] for hidden_states [B, L, E].

    is_index_masked: [B, L] bool, True at padding; band: this layer's window's, of this forward. L is a
    multiple of the window, as the model pads it.
    """
    batch, length, _ = hidden_states.shape
    heads, head_dim, w = attention.num_heads, attention.head_dim, attention.one_sided_attn_window_size
    # Queries, keys and values by one matmul: one cast of the hidden states to the autocast dtype instead of
    # three, and one input gradient instead of three summed. With keys and values spanned together
    # (blocks_local_attention) and the global keys' bias left out (global_attention), a layer's bf16 step
    # (forward and input-gradient backward) dispatches 257 aten ops instead of 335 (counted on CPU; on a GPU
    # each is a launch or host work, and the eager bf16 step there looked launch-bound), and the 2-layer
    # Longformer-base bf16 step at 4,096 tokens ran 8% faster on the 2-core EPYC (1,438 -> 1,318 ms, medians
    # of 3 alternated runs; fp32 within 1%).
    projections = (attention.query, attention.key, attention.value)
    query_key_value = F.linear(hidden_states, torch.cat([p.weight for p in projections]),
                               torch.cat([p.bias for p in projections])).view(batch, length, 3, heads, head_dim)
    query, key_value = query_key_value.split([1, 2], dim=2)
    global_tokens = band.global_tokens

    output = LOCAL_ATTENTIONS[band.kernel].attend(query.squeeze(2), key_value, global_tokens, band.mask, w,
                                                  1 / math.sqrt(head_dim))                        # [B, L, h, d]
    output = output.reshape(batch, length, -1).masked_fill(is_index_masked[:, :, None], 0.0)

    if global_tokens is not None:
        global_index, global_valid = global_tokens.index, global_tokens.valid
        # Global tokens attend every token through the global projections; their output replaces the local one.
        global_output = global_attention(attention, hidden_states, is_index_masked, global_index).to(output.dtype)
        keep = global_valid[:, :, None]
        updates = torch.where(keep, global_output, output.gather(1, global_index[:, :, None].expand_as(global_output)))
        output = output.scatter(1, global_index[:, :, None].expand_as(global_output), updates)
    return output


@contextmanager
def first_mask_row_only():
    """Inside the block, LongformerModel builds the one row of its attention mask it reads.

    transformers 5's LongformerModel.forward materializes a [B, 1, L, L] mask through
    create_bidirectional_mask and keeps only [:, 0, 0, :]; asked for one query position, the same
    function gives that row itself (2 x 4,096^2 values per forward otherwise: 3.7% of a bf16 step,
    128 MB). Older transformers without the function are left as they are."""
    from transformers.models.longformer import modeling_longformer

    full_mask = getattr(modeling_longformer, "create_bidirectional_mask", None)
    if full_mask is None:
        yield
        return

    def first_row(*args, inputs_embeds, **kwargs):
        return full_mask(*args, inputs_embeds=inputs_embeds[:, :1], **kwargs)
    modeling_longformer.create_bidirectional_mask = first_row
    try:
        yield
    finally:
        modeling_longformer.create_bidirectional_mask = full_mask


def _not_the_padding_notice(record: logging.LogRecord) -> bool:
    """A logging filter: Longformer's "Input ids are automatically padded to be a multiple of
    `config.attention_window`" notice goes, the rest stays. Attributions cover the real tokens only, and
    the notice cut through the progress bar of every `fastig attribute` on a Longformer."""
    return not record.getMessage().startswith("Input ids are automatically padded")


@contextmanager
def banded_attention(model: nn.Module, kernel: str | None = None):
    """Every LongformerSelfAttention of `model` runs `banded_self_attention` inside the block,
    with the local-attention `kernel` ("blocks", "flex"; None: default_kernel of the device),
    and the model builds only the row of its attention mask it reads (first_mask_row_only) and
    does not log its padding to a multiple of the window.

    Also for plain inference: `with banded_attention(model): model(...)`. Attention maps
    (output_attentions) and training mode still go to Hugging Face's code."""
    from transformers.models.longformer import modeling_longformer
    from transformers.models.longformer.modeling_longformer import LongformerEncoder, LongformerSelfAttention

    if kernel is not None and kernel not in KERNELS:
        raise InputError(f"kernel={kernel!r} is unknown; allowed: {', '.join(KERNELS)}")

    def banded(attention):
        def forward(hidden_states, attention_mask=None, is_index_masked=None, is_index_global_attn=None,
                    is_global_attn=None, output_attentions=False):
            band = bands.bands.get(attention.one_sided_attn_window_size)
            if band is None or output_attentions or attention.training:
                return type(attention).forward(attention, hidden_states, attention_mask, is_index_masked,
                                               is_index_global_attn, is_global_attn, output_attentions)
            return (banded_self_attention(attention, hidden_states, is_index_masked, band),)
        return forward
    attentions = [m for m in model.modules() if isinstance(m, LongformerSelfAttention)]
    encoders = [m for m in model.modules() if isinstance(m, LongformerEncoder)]
    bands = BandsOfForward(kernel, {attention.one_sided_attn_window_size for attention in attentions})
    hooks = [encoder.register_forward_pre_hook(bands.build, with_kwargs=True) for encoder in encoders]
    logger = logging.getLogger(modeling_longformer.__name__)
    logger.addFilter(_not_the_padding_notice)
    try:
        with forwards_shadowed(attentions, banded), first_mask_row_only():
            yield
    finally:
        logger.removeFilter(_not_the_padding_notice)
        for hook in hooks:
            hook.remove()

"""The last transformer layer computes only what the classifier reads: the first token.

Every supported classifier reads one position of the last hidden state, the first token (BERT's
pooler, RoBERTa's, Longformer's and ELECTRA's classification heads, DistilBERT's pre-classifier:
CLS or <s>). The other positions of the last layer's output reach F through nothing, so computing
them is wasted work: the last layer's queries, attention output, feed-forward and layer norms of
L - 1 tokens, and with Longformer (whose CLS is a global token, attending every token through the
global projections) the whole local attention of that layer. `first_token_only(model)` shadows
the last layer's forward with one that computes the first token's output alone and hands it on
broadcast to the full length (the shape the model's code expects; nothing reads the other rows).
The first token's output, and so F and its gradient, equal the full layer's to fp32 rounding.

Measured useful work per token-step with it (forward + input gradient, 2-core EPYC): a 4-layer
Longformer-base does 3 layers' worth, a 2-layer one 1; BERT keeps the last layer's keys and
values (4 of its 24 H^2 per token).
"""

from contextlib import contextmanager, nullcontext
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .longformer import global_attention
from .models import forwards_shadowed

# The classifiers that read the first token of the last hidden state, and no other position.
FIRST_TOKEN_CLASSIFIERS = ("BertForSequenceClassification", "RobertaForSequenceClassification",
                           "XLMRobertaForSequenceClassification", "CamembertForSequenceClassification",
                           "ElectraForSequenceClassification", "LongformerForSequenceClassification",
                           "DistilBertForSequenceClassification")


def _first_query_attention(query: nn.Linear, key: nn.Linear, value: nn.Linear, head_size: int, scaling: float,
                           hidden_states: torch.Tensor, attention_mask) -> torch.Tensor:
    """Self-attention output [B, 1, E] of the first token only, before the output projection.

    attention_mask: what the model passes its attention layers: None, or a [B, 1, Lq, L] mask
    (boolean, True where a key is seen, or additive floats); its first query row is the one used.
    """
    batch, length, _ = hidden_states.shape
    q = query(hidden_states[:, :1]).view(batch, 1, -1, head_size).transpose(1, 2)     # [B, h, 1, d]
    k = key(hidden_states).view(batch, length, -1, head_size).transpose(1, 2)          # [B, h, L, d]
    v = value(hidden_states).view(batch, length, -1, head_size).transpose(1, 2)
    if attention_mask is not None:
        attention_mask = attention_mask[:, :, :1]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=scaling)  # [B, h, 1, d]
    return out.transpose(1, 2).reshape(batch, 1, -1)


class FirstTokenLayer(NamedTuple):
    """The forward that shadows a last layer, and a forward pre-hook that reads off the data what it branches
    on (None: nothing). The hook runs outside the layer's forward, so that a compiled layer (fastig.compiled)
    has no data-dependent branch to break its graph on."""
    forward: Callable
    read_before: Callable | None = None


def _bert_layer(layer: nn.Module) -> FirstTokenLayer:
    """BertLayer and its copies (RoBERTa, XLM-R, CamemBERT, ELECTRA): the first token's layer output."""
    self_attention = layer.attention.self

    def forward(hidden_states, attention_mask=None, *args, **kwargs):
        context = _first_query_attention(self_attention.query, self_attention.key, self_attention.value,
                                         self_attention.attention_head_size, self_attention.scaling,
                                         hidden_states, attention_mask)
        attention_output = layer.attention.output(context, hidden_states[:, :1])
        first = layer.output(layer.intermediate(attention_output), attention_output)
        return first.expand_as(hidden_states)
    return FirstTokenLayer(forward)


def _distilbert_layer(layer: nn.Module) -> FirstTokenLayer:
    attention = layer.attention

    def forward(hidden_states, attention_mask=None, *args, **kwargs):
        context = _first_query_attention(attention.q_lin, attention.k_lin, attention.v_lin,
                                         attention.attention_head_size, attention.scaling, hidden_states,
                                         attention_mask)
        attention_output = layer.sa_layer_norm(attention.out_lin(context) + hidden_states[:, :1])
        first = layer.output_layer_norm(layer.ffn(attention_output) + attention_output)
        return first.expand_as(hidden_states)
    return FirstTokenLayer(forward)


def _longformer_layer(layer: nn.Module) -> FirstTokenLayer:
    """LongformerLayer whose first token is global in every row (fastig puts global attention on CLS); any
    other call runs the whole layer."""
    first_is_global = False      # in the call now running

    def read_before(module, args, kwargs):
        nonlocal first_is_global
        is_index_global_attn = kwargs["is_index_global_attn"] if "is_index_global_attn" in kwargs else args[3]
        first_is_global = bool(is_index_global_attn[:, 0].all())

    def forward(hidden_states, attention_mask=None, is_index_masked=None, is_index_global_attn=None,
                is_global_attn=None, output_attentions=False):
        if output_attentions or not first_is_global:
            return type(layer).forward(layer, hidden_states, attention_mask, is_index_masked, is_index_global_attn,
                                       is_global_attn, output_attentions)
        first_index = torch.zeros(hidden_states.shape[0], 1, dtype=torch.long, device=hidden_states.device)
        context = global_attention(layer.attention.self, hidden_states, is_index_masked, first_index)
        attention_output = layer.attention.output(context.to(hidden_states.dtype), hidden_states[:, :1])
        first = layer.ff_chunk(attention_output)
        return (first.expand_as(hidden_states),)
    return FirstTokenLayer(forward, read_before)


LAST_LAYERS = {"BertLayer": _bert_layer, "RobertaLayer": _bert_layer, "XLMRobertaLayer": _bert_layer,
               "CamembertLayer": _bert_layer, "ElectraLayer": _bert_layer, "TransformerBlock": _distilbert_layer,
               "LongformerLayer": _longformer_layer}


def last_layer(model: nn.Module) -> nn.Module | None:
    """The last transformer layer of a classifier that reads only the first token, if fastig knows its kind."""
    if type(model).__name__ not in FIRST_TOKEN_CLASSIFIERS:
        return None
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers or type(layers[-1]).__name__ not in LAST_LAYERS:
        return None
    return layers[-1]


@contextmanager
def first_token_only(model: nn.Module, attributed_layer: nn.Module | None = None):
    """Inside the block the model's last layer computes only its first token's output (see the module's
    docstring); nothing changes for other models, or when the attributed layer is the last layer or in it."""
    layer = last_layer(model)
    if layer is None or (attributed_layer is not None and any(m is attributed_layer for m in layer.modules())):
        with nullcontext():
            yield
        return
    first_token = LAST_LAYERS[type(layer).__name__](layer)
    hooks = [layer.register_forward_pre_hook(first_token.read_before, with_kwargs=True)] \
        if first_token.read_before else []
    try:
        with forwards_shadowed([layer], lambda module: first_token.forward):
            yield
    finally:
        for hook in hooks:
            hook.remove()

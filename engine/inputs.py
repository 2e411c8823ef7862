"""From texts or ids to what one attribution needs: ids, baseline, model arguments, tokens.

The construction is the seed notebook's: CLS + the text's ids (truncated) + SEP, and a
baseline of the same length, CLS + PAD * n + SEP. A tokenizer without CLS or SEP (GPT-2's,
Llama's, T5's) puts its own special tokens around the text instead (none, BOS, EOS), and the
baseline keeps those. A pair of texts (premise and hypothesis, query and passage) is encoded by the
tokenizer's pair template ([CLS] A [SEP] B [SEP]) with its token types; the baseline keeps the
template's special tokens. Masks are left to the model where it builds them itself (token types,
position ids), so baseline and input embed exactly as they do in a plain forward call.
"""

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .display import WORD_START_MARKERS
from .errors import BaselineError, EmptyTextError, InputError, caller_outside_fastig


class TruncationWarning(UserWarning):
    """A text longer than the model takes was cut: its record's truncated_tokens says by how much."""

BASELINES = ("pad", "unk", "mask", "zeros")
# Models whose position ids start after the padding index (RoBERTa's scheme).
OFFSET_POSITION_MODELS = ("roberta", "longformer", "xlm-roberta", "camembert", "xlm-roberta-xl")
TEMPLATE_PROBE = "text"     # encoded with and without special tokens: what the tokenizer's template adds
PAIR_SEPARATOR = "\n\n"     # between a pair's texts where they are shown as one


@dataclass
class Document:
    """One document ready for attribution.

    input_ids: [L] long. baseline_ids: [L] long, or None when the baseline is given as
    an embedding (`baseline_embedding`, [L', H] float, or 0.0 for "zeros").
    model_kwargs: tensors [L] passed to the model next to the ids (attention mask, global
    attention mask), each gets a batch dimension at call time. special_positions: where the
    special tokens are, by the tokenizer's special-token mask (without a tokenizer: the ids
    the model config names pad, bos, eos, sep or cls). truncated_tokens: the text's tokens
    left out past max_length. For display (never the raw vocabulary pieces such as "Ġhas"):
    display_tokens, each token's characters in the text (a piece that only continues the
    previous piece's character is ""), text (None for ids), offsets (each token's [start, end)
    in the text, None for special tokens), word_ids (the tokenizer's word of each token, None
    for special tokens; punctuation is a word of its own).
    """
    input_ids: torch.Tensor
    baseline_ids: torch.Tensor | None
    baseline_embedding: torch.Tensor | float | None
    model_kwargs: dict
    tokens: list
    special_positions: list
    truncated_tokens: int = 0
    display_tokens: list | None = None
    text: str | None = None
    offsets: list | None = None
    word_ids: list | None = None


@dataclass
class Encoded:
    """A text's ids with its special tokens [L] (`kept`: their positions, which a baseline of ids keeps), the
    tokens cut, where each token is in the text, and a pair's token types."""
    ids: torch.Tensor
    kept: list
    dropped: int = 0
    text: str | None = None
    offsets: list | None = None
    word_ids: list | None = None
    token_type_ids: list | None = None


def special_tokens_around(tokenizer) -> tuple[list[int], list[int]]:
    """The ids before and after a text's own: CLS and SEP where the tokenizer has both (BERT's; RoBERTa's
    <s> and </s>), else the special tokens its own template adds (GPT-2's none, Llama's BOS, T5's EOS)."""
    if tokenizer.cls_token_id is not None and tokenizer.sep_token_id is not None:
        return [tokenizer.cls_token_id], [tokenizer.sep_token_id]
    own = tokenizer.encode(TEMPLATE_PROBE, add_special_tokens=False)
    templated = tokenizer.encode(TEMPLATE_PROBE)
    for start in range(len(templated) - len(own) + 1):
        if templated[start:start + len(own)] == own:
            return templated[:start], templated[start + len(own):]
    raise InputError(f"{type(tokenizer).__name__} has no CLS and SEP tokens, and its template changes the text's "
                     "own tokens; give input ids [B, L] instead of texts")


def max_positions(config, tokenizer=None) -> int | None:
    """The tokens the model takes: its position limit (less the offset of RoBERTa-like positions), or the
    tokenizer's where smaller; None where neither has one (relative positions: T5, Funnel)."""
    total = getattr(config, "max_position_embeddings", None)
    if total is not None and config.model_type in OFFSET_POSITION_MODELS:
        total -= (config.pad_token_id or 0) + 1
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if tokenizer_limit and tokenizer_limit < 1_000_000:
        total = tokenizer_limit if total is None else min(total, tokenizer_limit)
    return total


def max_text_tokens(config, tokenizer=None) -> int | None:
    """Default truncation: the tokens the model takes less the special tokens around a text (None: no limit)."""
    total = max_positions(config, tokenizer)
    if total is None:
        return None
    return total - (2 if tokenizer is None else sum(map(len, special_tokens_around(tokenizer))))


def special_ids(config, tokenizer=None) -> dict:
    """The ids that fill a baseline: PAD, UNK and MASK from the tokenizer, PAD from the config where the
    tokenizer has none (a GPT-2 classifier fine-tuned with config.pad_token_id set, its tokenizer saved without)."""
    ids = {name: getattr(tokenizer, f"{name}_token_id", None) for name in ("pad", "unk", "mask")}
    if ids["pad"] is None:
        ids["pad"] = config.pad_token_id
    return ids


def check_max_length(max_length, config, tokenizer=None) -> int | None:
    """max_length (text tokens kept per text): None for the model's limit (None: it has none), else an int from
    1 to it."""
    limit = max_text_tokens(config, tokenizer)
    if max_length is None:
        return limit
    if isinstance(max_length, bool) or not isinstance(max_length, int) or not 1 <= max_length <= (limit or max_length):
        allowed = f"from 1 to {limit}, the text tokens this model's positions take" if limit else "of at least 1"
        raise InputError(f"max_length={max_length!r} must be an integer {allowed}")
    return max_length


def _is_pair(text) -> bool:
    return isinstance(text, (tuple, list)) and len(text) == 2 and all(isinstance(part, str) for part in text)


def encode_pair(i: int, pair, tokenizer, max_length: int | None, positions: int | None,
                why: str) -> tuple[Encoded, str | None]:
    """Texts A and B by the tokenizer's pair template, their tokens cut longest first to max_length together
    (and the template's to `positions`); shown as one text, A, a blank line, B (offsets and words of B after
    A's). With what was cut, said (None: nothing)."""
    first, second = pair
    for part in pair:
        if not tokenizer(part, add_special_tokens=False)["input_ids"]:
            raise EmptyTextError(f"texts[{i}]: the pair's text {part[:40]!r} holds no token; give non-empty texts")
    fast = getattr(tokenizer, "is_fast", False)
    whole = tokenizer(first, second, return_special_tokens_mask=True, return_offsets_mapping=fast)
    template = sum(whole["special_tokens_mask"])
    limits = [n for n in (positions, None if max_length is None else max_length + template) if n is not None]
    keep = min(limits, default=len(whole["input_ids"]))
    encoding = whole if len(whole["input_ids"]) <= keep else tokenizer(
        first, second, return_special_tokens_mask=True, return_offsets_mapping=fast, truncation="longest_first",
        max_length=keep)
    ids, special = encoding["input_ids"], encoding["special_tokens_mask"]
    dropped = len(whole["input_ids"]) - len(ids)
    cut = (f"texts[{i}]: a pair of {len(whole['input_ids']) - template} tokens, {len(ids) - template} kept and "
           f"{dropped} dropped, from the longer text first ({why})") if dropped else None
    text = first + PAIR_SEPARATOR + second
    offsets = word_ids = None
    if fast:
        shift = len(first) + len(PAIR_SEPARATOR)
        words, parts = encoding.word_ids(), encoding.sequence_ids()
        next_word = 1 + max((w for w, part in zip(words, parts) if part == 0 and w is not None), default=-1)
        offsets, word_ids = [], []
        for (start, end), word, part, is_special in zip(encoding["offset_mapping"], words, parts, special):
            offsets.append(None if is_special or part is None else [start + shift * part, end + shift * part])
            word_ids.append(None if is_special or word is None else word + next_word * part)
    types = encoding.get("token_type_ids") if "token_type_ids" in tokenizer.model_input_names else None
    return Encoded(torch.tensor(ids), [p for p, is_special in enumerate(special) if is_special], dropped, text,
                   offsets, word_ids, types), cut


def encode_texts(texts, tokenizer, max_length: int | None, why: str = "max_length",
                 positions: int | None = None) -> list[Encoded]:
    """Each text as CLS + ids[:max_length] + SEP (or the tokenizer's own special tokens around them), the number
    of tokens cut, and (fast tokenizers) each token's place in the text and its word; a pair of texts by
    `encode_pair`."""
    if tokenizer is None:
        raise InputError("texts need a tokenizer; pass one to Engine(...) or give input ids [B, L]")
    before, after = special_tokens_around(tokenizer)
    encoded, cuts = [], []
    for i, text in enumerate(texts):
        if _is_pair(text):
            pair, cut = encode_pair(i, text, tokenizer, max_length, positions, why)
            encoded.append(pair)
            cuts += [cut] if cut else []
            continue
        if text is None or isinstance(text, float) and text != text:     # None, or NaN: a table's missing cell
            raise InputError(f"texts[{i}] is missing ({text}: an empty cell of a table?); give a str, or leave "
                             "the document out (a pandas column: .dropna())")
        if not isinstance(text, str):
            raise InputError(f"texts[{i}] is of type {type(text).__name__}; expected a str or a pair (str, str)")
        offsets = word_ids = None
        if getattr(tokenizer, "is_fast", False):
            encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets, word_ids = encoding["input_ids"], encoding["offset_mapping"], encoding.word_ids()
        else:
            ids = tokenizer.encode(text, add_special_tokens=False)
        if not ids:
            raise EmptyTextError(f"texts[{i}]={text[:40]!r} holds no token; give a non-empty text")
        dropped = max(0, len(ids) - max_length) if max_length is not None else 0
        if dropped:
            cuts.append(f"texts[{i}]: {len(ids)} tokens, the first {max_length} kept and {dropped} dropped ({why})")
        if offsets is not None:     # CLS and SEP are in no word and at no place of the text
            offsets = [None] * len(before) + list(map(list, offsets[:max_length])) + [None] * len(after)
            word_ids = [None] * len(before) + word_ids[:max_length] + [None] * len(after)
        ids = torch.tensor(before + ids[:max_length] + after)
        kept = list(range(len(before))) + list(range(len(ids) - len(after), len(ids)))
        encoded.append(Encoded(ids, kept, dropped, text, offsets, word_ids))
    warn_cut(cuts, len(texts))
    return encoded


def warn_cut(cuts: list[str], texts: int, shown: int = 3) -> None:
    """One TruncationWarning for the texts of a call that were cut, the first `shown` of them said: one a
    text made a data set of IMDB reviews print thousands of lines. Each record's truncated_tokens keeps its count."""
    if len(cuts) > 1:
        more = f"; and {len(cuts) - shown} more" if len(cuts) > shown else ""
        cuts = [f"{len(cuts)} of {texts} texts were cut (each record's truncated_tokens says by how much): "
                + "; ".join(cuts[:shown]) + more]
    if cuts:
        warnings.warn(cuts[0], TruncationWarning, stacklevel=caller_outside_fastig())


def display_tokens(tokens: list[str], encoded: Encoded, tokenizer, special: list[int]) -> list[str]:
    """What each token shows: its own characters of the text (offsets), else the tokenizer's decoding of
    it alone; special tokens as they are. Byte-level pieces that share one character (an em dash is two)
    give it to the first, so nothing shows twice and nothing shows as bytes ("âĢĶ"). A bare word-start
    piece ("▁" alone, SentencePiece's) shows nothing: at the text's start its offsets point at the first
    character, which the piece after it shows."""
    if encoded.offsets is not None:
        shown, end = [], 0
        for token, place in zip(tokens, encoded.offsets):
            if place is None or token in WORD_START_MARKERS:
                shown.append(token if place is None else "")
                continue
            start = max(place[0], end)
            shown.append(encoded.text[start:place[1]].strip() if place[1] > start else "")
            end = max(end, place[1])
        return shown
    if tokenizer is None:
        return list(tokens)
    specials = set(special)
    return [token if p in specials else tokenizer.convert_tokens_to_string([token]).strip()
            for p, token in enumerate(tokens)]


def split_ids(ids: torch.Tensor, config) -> list[torch.Tensor]:
    """A LongTensor [L] or [B, L] of ids (special tokens included) as a list of [L] tensors, checked
    against the model's vocabulary and positions."""
    if ids.dtype not in (torch.int64, torch.int32):
        raise InputError(f"input ids must be an integer tensor, got dtype {ids.dtype}")
    if ids.ndim == 1:
        ids = ids.unsqueeze(0)
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise EmptyTextError(f"input ids of shape {tuple(ids.shape)}: expected [B, L] with B >= 1 and L >= 1")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= config.vocab_size):
        raise InputError(f"input ids from {int(ids.min())} to {int(ids.max())}: this model's vocabulary holds ids "
                         f"0 to {config.vocab_size - 1}")
    positions = max_positions(config)
    if positions is not None and ids.shape[1] > positions:
        raise InputError(f"input ids of length {ids.shape[1]}: this model takes at most {positions} tokens "
                         "(its position embeddings end there); shorten them")
    return [row.long().cpu() for row in ids]


def baseline_for(ids: torch.Tensor, baseline, specials: dict, doc_index: int, kept: list):
    """(baseline ids [L] or None, baseline embedding or None) for one document; a baseline of token ids keeps
    the special tokens at `kept`."""
    if isinstance(baseline, str):
        if baseline == "zeros":
            return None, 0.0
        if baseline not in BASELINES:
            raise BaselineError(f"baseline={baseline!r} is unknown; allowed: {', '.join(BASELINES)}, "
                                "a LongTensor of ids or a FloatTensor of embeddings")
        fill = specials[baseline]
        if fill is None:
            raise BaselineError(f"baseline={baseline!r} needs a {baseline} token id, which neither tokenizer nor config defines")
        # Keep the special tokens (CLS, SEP), replace the rest, as the seed notebook does.
        base = torch.full_like(ids, fill)
        kept = torch.tensor(kept, dtype=torch.long)
        base[kept] = ids[kept]
        return base, None
    if isinstance(baseline, (list, tuple)):
        return baseline_for(ids, baseline[doc_index], specials, doc_index, kept)
    if isinstance(baseline, torch.Tensor):
        if not baseline.is_floating_point():
            base = baseline if baseline.ndim == 1 else baseline[doc_index]
            if base.shape != ids.shape:
                raise BaselineError(f"baseline ids of shape {tuple(base.shape)} do not match input ids of shape {tuple(ids.shape)}")
            return base.long().cpu(), None
        return None, baseline if baseline.ndim == 2 else baseline[doc_index]
    raise BaselineError(f"baseline of type {type(baseline).__name__} is not supported; "
                        f"allowed: {', '.join(BASELINES)}, a LongTensor of ids or a FloatTensor of embeddings")


def _texts_or_ids(inputs):
    """Any sequence of texts as a list (a pandas Series, a numpy array, a data set's column, a generator), a
    numpy array of ints as a tensor; a str, tensor, list, tuple or mapping as it is."""
    if isinstance(inputs, np.ndarray):
        return torch.as_tensor(inputs) if inputs.dtype.kind in "iu" else inputs.tolist()
    if hasattr(inputs, "columns"):
        raise InputError(f"inputs of type {type(inputs).__name__} (a table): give its column of texts, as "
                         "table['text']")
    if isinstance(inputs, (str, torch.Tensor, Mapping, list, tuple)) or not isinstance(inputs, Iterable):
        return inputs
    return list(inputs)


def _listed_ids(inputs) -> list[torch.Tensor] | None:
    """Ids as Python lists, one LongTensor a row: tokenizer.encode's list of ints (one document) or a list of
    them (several, of any lengths); None for anything else. They were refused as texts of type int."""
    def is_id(value) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not isinstance(inputs, (list, tuple)) or not inputs:
        return None
    rows = [inputs] if all(map(is_id, inputs)) else inputs
    if all(isinstance(row, (list, tuple)) and row and all(map(is_id, row)) for row in rows):
        return [torch.tensor(row, dtype=torch.long) for row in rows]
    return None


def _rows(value, name: str) -> list[torch.Tensor]:
    """A tokenizer output's field ([B, L] or [L]: a tensor, a numpy array, lists) as one tensor per row."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        value = torch.as_tensor(value)
        if value.ndim in (1, 2):
            return list(value.reshape(-1, value.shape[-1]))
    elif isinstance(value, (list, tuple)) and value:
        if all(isinstance(v, int) for v in value):
            return [torch.tensor(value)]
        if all(isinstance(v, (list, tuple, torch.Tensor, np.ndarray)) for v in value):
            return [torch.as_tensor(v) for v in value]
    raise InputError(f"{name} of a tokenizer's output must be ids [B, L] or [L] (a tensor, an array or lists), "
                     f"got {type(value).__name__}")


def encode_batch(batch: Mapping, tokenizer, config, baseline):
    """A tokenizer's output (a BatchEncoding or dict: input_ids, attention_mask, token_type_ids) as each row's
    ids without its padding (the attention mask's zeros, on either side), and the baseline likewise where it
    is ids padded as the input. A pair keeps its token types; the template's special tokens (a pair's
    middle SEP too) are those a baseline of ids keeps, as for a pair given as texts."""
    if "input_ids" not in batch:
        raise InputError("a mapping of inputs must be a tokenizer's output, with 'input_ids'; it holds "
                         f"{', '.join(map(str, batch)) or 'nothing'}")
    ids = _rows(batch["input_ids"], "input_ids")
    masks = _rows(batch["attention_mask"], "attention_mask") if batch.get("attention_mask") is not None else None
    types = _rows(batch["token_type_ids"], "token_type_ids") if batch.get("token_type_ids") is not None else None
    for name, field in (("attention_mask", masks), ("token_type_ids", types)):
        if field is not None and [r.shape for r in field] != [r.shape for r in ids]:
            raise InputError(f"{name} of shape {[tuple(r.shape) for r in field]} does not match input_ids' "
                             f"{[tuple(r.shape) for r in ids]}")
    attended = [mask.bool().cpu() for mask in masks or [torch.ones_like(row) for row in ids]]
    if masks is None:
        refuse_padding(ids, config, tokenizer)
    template = template_ids(config, tokenizer)
    encoded = []
    for i, (row, mask) in enumerate(zip(ids, attended)):
        row = split_ids(row.cpu()[mask], config)[0]
        encoded.append(Encoded(row, [p for p, t in enumerate(row.tolist()) if t in template],
                               token_type_ids=None if types is None else types[i].cpu()[mask].tolist()))
    if isinstance(baseline, (torch.Tensor, np.ndarray)) and not torch.as_tensor(baseline).is_floating_point():
        padded = _rows(baseline, "baseline")
        if [r.shape for r in padded] == [r.shape for r in ids]:
            baseline = [row.cpu()[mask] for row, mask in zip(padded, attended)]
    return encoded, baseline


def template_ids(config, tokenizer=None) -> set:
    """The ids a template puts around a text: the tokenizer's (CLS and SEP, or its own), without one the
    config's bos, eos, sep and cls."""
    if tokenizer is not None:
        return set(sum(special_tokens_around(tokenizer), []))
    return {getattr(config, f"{name}_token_id", None) for name in ("bos", "eos", "sep", "cls")} - {None}


def refuse_padding(rows: list[torch.Tensor], config, tokenizer=None) -> None:
    """Ids are explained as given, every token attended: padding among them (a tokenizer's padded batch without
    its mask) would be explained as text and change the prediction. Refused, where the padding token is
    none of the ids a text holds (GPT-2's PAD is often its EOS, Llama's its UNK)."""
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    pad = config.pad_token_id if pad is None else pad
    named = ("unk", "mask", "bos", "eos")
    others = template_ids(config, tokenizer) | {getattr(source, f"{name}_token_id", None)
                                                for source in (config, tokenizer) for name in named}
    if pad is None or pad in others:
        return
    for i, row in enumerate(rows):
        if bool((row == pad).any()):
            raise InputError(f"input ids row {i} holds the padding token (id {pad}): ids are explained as given, "
                             "every token attended, so padding would count as text and change the prediction; give "
                             "the tokenizer's whole output (input_ids with its attention_mask), or the texts")


def build_documents(texts_or_ids, tokenizer, config, baseline="pad", max_length: int | None = None) -> list[Document]:
    """Documents for a str, a list of str (or of pairs of str; any sequence of them), a LongTensor [B, L] / [L]
    of ids (or lists of ids), or a tokenizer's output (its padding left out by the attention mask)."""
    texts_or_ids = _texts_or_ids(texts_or_ids)
    if isinstance(texts_or_ids, str):
        texts_or_ids = [texts_or_ids]
    listed = _listed_ids(texts_or_ids)
    if max_length is not None and (listed or isinstance(texts_or_ids, (Mapping, torch.Tensor))):     # it was ignored
        raise InputError(f"max_length={max_length!r} cuts texts; ids and a tokenizer's output are explained as "
                         "given: cut them before (the tokenizer's truncation=True, max_length=), or give the texts")
    if isinstance(texts_or_ids, Mapping):
        encoded, baseline = encode_batch(texts_or_ids, tokenizer, config, baseline)
    elif isinstance(texts_or_ids, torch.Tensor) or listed:
        # Ids hold the special tokens already: those the tokenizer puts around a text (without one: the first
        # and the last, CLS and SEP), which a baseline of token ids keeps.
        before, after = (1, 1) if tokenizer is None else map(len, special_tokens_around(tokenizer))
        rows = [row for ids in listed or [texts_or_ids] for row in split_ids(ids, config)]
        refuse_padding(rows, config, tokenizer)
        encoded = [Encoded(ids, list(range(before)) + list(range(len(ids) - after, len(ids)))) for ids in rows]
    elif isinstance(texts_or_ids, (list, tuple)):
        if not texts_or_ids:
            raise EmptyTextError("no text given: pass a str, a non-empty list of str, or ids [B, L]")
        why = "max_length" if max_length is not None else "the model's positions end there"
        encoded = encode_texts(texts_or_ids, tokenizer, check_max_length(max_length, config, tokenizer), why,
                               max_positions(config, tokenizer))
    else:
        raise InputError(f"inputs of type {type(texts_or_ids).__name__}: expected a str, a list of str (or of pairs "
                         "of str), a LongTensor of ids or a tokenizer's output")

    specials = special_ids(config, tokenizer)
    documents = []
    for i, piece in enumerate(encoded):
        ids = piece.ids
        baseline_ids, baseline_embedding = baseline_for(ids, baseline, specials, i, piece.kept)
        kwargs = {"attention_mask": torch.ones_like(ids)}
        if piece.token_type_ids is not None and getattr(config, "type_vocab_size", 0) > 1:   # the model embeds them
            kwargs["token_type_ids"] = torch.tensor(piece.token_type_ids)
        if config.model_type == "longformer":
            # Global attention on CLS, as Longformer classifiers are trained.
            kwargs["global_attention_mask"] = torch.zeros_like(ids)
            kwargs["global_attention_mask"][0] = 1
        tokens = tokenizer.convert_ids_to_tokens(ids.tolist()) if tokenizer is not None else [str(t) for t in ids.tolist()]
        special = special_positions(ids, config, tokenizer)
        documents.append(Document(ids, baseline_ids, baseline_embedding, kwargs, tokens, special, piece.dropped,
                                  display_tokens(tokens, piece, tokenizer, special), piece.text, piece.offsets,
                                  piece.word_ids))
    return documents


def special_positions(ids: torch.Tensor, config, tokenizer=None) -> list[int]:
    """Positions of the special tokens in ids [L], which rankings, highlights and aggregates leave out: the
    tokenizer's special-token mask but UNK, which stands for a text's own characters (an emoji, a character
    an English vocabulary lacks: BERT's gave a review's 😍 its second-highest score) and is shown as them."""
    if tokenizer is not None:
        mask = tokenizer.get_special_tokens_mask(ids.tolist(), already_has_special_tokens=True)
        return [p for p, (special, token) in enumerate(zip(mask, ids.tolist()))
                if special and token != tokenizer.unk_token_id]
    specials = {getattr(config, f"{name}_token_id", None) for name in ("pad", "bos", "eos", "sep", "cls")} - {None}
    return [p for p, t in enumerate(ids.tolist()) if t in specials]

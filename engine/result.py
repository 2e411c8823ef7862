"""What an attribution returns: one record per document, the run's statistics, and the batch of both.

`DocumentResult` is the one per-document record: `Attribution` holds one per document, and the
data-set shards, the reports and the demo are written from it and read back into it
(`to_json` / `from_json`), so every output uses the same field names.
"""

import math
from dataclasses import asdict, dataclass, field, fields

import torch

from .display import RankedWord, Word, captum_record_table, label_name, shown_units, top_bottom_words
from .scheduler import MemoryStats
from .summarize import RankedToken, top_bottom


SUMMARY_TEXT = 60      # characters of a document's text in its one-line summary


@dataclass(repr=False)
class DocumentResult:
    """One document's attribution, on CPU.

    tokens: the L token strings. input_ids: [L] long. special_positions: where the special
    tokens are (CLS, SEP, PAD...), by the tokenizer's special-token mask.
    token_scores: [L] fp32, the seed's normalized token sums. prediction, target: class ids
    (target: the class attributed). probs: [C] fp32 softmax of the logits at x.
    output_at_input, output_at_baseline: F(x) and F(b). delta: sum(attributions) - (F(x) - F(b)).
    alphas, integrand: [n] fp32, the rule's points and s(alpha) = <dF/dz, e(x) - e(b)> there.
    evaluations: model evaluations spent on the document. With n_steps None (the default) or
    "auto", tolerance_met and evaluations_allowed say whether the target (the accuracy, or the
    tolerance) was met and within how many evaluations. With n_steps None also: precision, the
    one this document ran in; estimated_error, the relative L2 difference of its last pair of
    rules; precision_error, low precision's relative error at alpha = 1/2 where it was checked.
    These are None otherwise. truncated_tokens: the text's tokens cut past max_length (0: none).
    For people (every output shows these, never the vocabulary pieces of `tokens`): display_tokens,
    text, offsets and word_ids, as in fastig.inputs.Document. id, label: the document's place in its data set
    (or the text's number) and its label, where there is one (a multi-label data set's: a list of classes);
    data_id: the data's own id of it (`fastig dataset --id-column`), where it has one.
    """
    tokens: list
    input_ids: torch.Tensor
    special_positions: list
    token_scores: torch.Tensor
    prediction: int
    probs: torch.Tensor
    target: int
    output_at_input: float
    output_at_baseline: float
    delta: float
    alphas: torch.Tensor
    integrand: torch.Tensor
    evaluations: int
    tolerance_met: bool | None = None
    evaluations_allowed: int | None = None
    precision: str | None = None
    estimated_error: float | None = None
    precision_error: float | None = None
    truncated_tokens: int = 0
    display_tokens: list | None = None
    text: str | None = None
    offsets: list | None = None
    word_ids: list | None = None
    id: int | str | None = None
    label: int | list[int] | None = None
    data_id: int | str | None = None

    def __repr__(self) -> str:
        return f"DocumentResult({self.summary()})"

    def _repr_html_(self) -> str:
        """Its row of Captum's visualize_text table, its words highlighted, for notebooks (classes by id: a
        record holds no label names; the Attribution's table names them)."""
        return captum_record_table([self], {})

    def summary(self, labels: dict | None = None) -> str:
        """The record in one line, classes named by `labels` ({"0": "negative", ...}) where given: the
        dataclass's own repr printed every tensor (1,700 characters for a review of 44 tokens)."""
        def name(value):
            return label_name(value, labels or {})
        text = " ".join((self.text if self.text is not None else " ".join(self.shown_tokens)).split())
        shown = text if len(text) <= SUMMARY_TEXT else text[:SUMMARY_TEXT - 1] + "\u2026"
        return ", ".join([*([f"id={self.id!r}"] if self.id is not None else []),
                          *([f"label={name(self.label)}"] if self.label is not None else []),
                          f"tokens={len(self.tokens)}", f"prediction={name(self.prediction)}",
                          f"probability={self.probability:.3f}", f"target={name(self.target)}",
                          f"delta={self.delta:.1e}", f"evaluations={self.evaluations}",
                          # the default call's spend and estimate, and where it stopped short (--max-steps)
                          *([f"estimated_error={self.estimated_error:.1e}"] if self.estimated_error is not None
                            else []),
                          *(["tolerance_met=False"] if self.tolerance_met is False else []), f"text={shown!r}"])

    @property
    def probability(self) -> float:
        """The probability of the predicted class."""
        return float(self.probs[self.prediction])

    @property
    def relative_delta(self) -> float:
        """|delta| / |F(x) - F(b)| (inf when F(x) = F(b) and delta is not 0)."""
        gap = abs(self.output_at_input - self.output_at_baseline)
        return abs(self.delta) / gap if gap else (0.0 if self.delta == 0 else math.inf)

    @property
    def shown_tokens(self) -> list:
        """The tokens as people read them (display_tokens; the vocabulary pieces where there are none)."""
        return self.display_tokens if self.display_tokens is not None else self.tokens

    def top_bottom(self, k: int = 20, unique: bool = True) -> tuple[list[RankedToken], list[RankedToken]]:
        """The k most positive and k most negative tokens as shown, special tokens left out; with unique,
        each token text once (at its highest, or lowest, score)."""
        return top_bottom(self.shown_tokens, self.token_scores, k, self.special_positions, unique)

    def words(self, tokens: bool = False) -> list[Word]:
        """What a person reads of the document, special tokens left out: its words as the text has them (a
        WordPiece's "un" "##work" "##ably" is "unworkably"), each a fastig.display.Word (text, score: the sum
        of its pieces' token scores, positions, start and end in `text`); with tokens, each token as shown."""
        return shown_units(self, tokens)

    def top_bottom_words(self, k: int = 20, tokens: bool = False) -> tuple[list[RankedWord], list[RankedWord]]:
        """The two ends of the ranking of `words(tokens)`: up to k texts scoring toward the target, highest
        first, and up to k away from it, lowest first, each text once (RankedWord: text, score, count), as
        `fastig attribute` prints them and the report lists them."""
        return top_bottom_words(self.words(tokens), k)

    def to_json(self, k: int = 20) -> dict:
        """A JSON-ready dict of every field, plus the probability of the prediction and the top and
        bottom k tokens (derived, for readers of the file; from_json recomputes them)."""
        top, bottom = self.top_bottom(k)
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                values[name] = value.tolist()
        return {**values, "probability": self.probability, "top": [vars(t) for t in top],
                "bottom": [vars(t) for t in bottom]}

    @classmethod
    def from_json(cls, values: dict) -> "DocumentResult":
        """The record `to_json` wrote (its derived keys ignored), every field checked: a file edited by
        hand, or not fastig's, is a ValueError naming the field, never a record of the wrong types."""
        if not isinstance(values, dict):
            raise ValueError(f"a record is a JSON object, not {type(values).__name__}")
        kwargs = {}
        for f in fields(cls):
            if f.name in values:
                kwargs[f.name] = _checked(f.name, values[f.name])
            elif f.name in _REQUIRED:
                raise ValueError(f"a record needs {f.name!r}")
        lengths = {len(kwargs[name]) for name in ("tokens", "token_scores", "display_tokens", "offsets", "word_ids")
                   if kwargs.get(name) is not None}
        if len(lengths) > 1 or len(kwargs["alphas"]) != len(kwargs["integrand"]):
            raise ValueError("a record's tokens and their scores, display tokens, offsets or word ids, or its alphas "
                             "and integrand, differ in length")
        return cls(**kwargs)


_TENSORS = {"input_ids": torch.long, "token_scores": torch.float32, "probs": torch.float32,
            "alphas": torch.float32, "integrand": torch.float32}
_INTEGERS = ("prediction", "target", "evaluations", "truncated_tokens")
_NUMBERS = ("output_at_input", "output_at_baseline", "delta")
_REQUIRED = ("tokens", "input_ids", "special_positions", *_TENSORS, *_INTEGERS[:3], *_NUMBERS)


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _checked(name: str, value):
    """One field of a record read from JSON, as its type, or a ValueError naming it."""
    def wrong(expected):
        return ValueError(f"a record's {name!r} must be {expected}, not {value!r:.60}")
    if name in _TENSORS:
        check = _is_integer if _TENSORS[name] == torch.long else _is_number
        if not isinstance(value, list) or not all(map(check, value)):
            raise wrong("a list of " + ("integers" if _TENSORS[name] == torch.long else "numbers"))
        return torch.tensor(value, dtype=_TENSORS[name])
    if name == "tokens" and not (isinstance(value, list) and all(isinstance(t, str) for t in value)):
        raise wrong("a list of strings")
    if name == "special_positions" and not (isinstance(value, list) and all(map(_is_integer, value))):
        raise wrong("a list of integers")
    if name in _INTEGERS and not _is_integer(value) or name in _NUMBERS and not _is_number(value):
        raise wrong("an integer" if name in _INTEGERS else "a number")
    if name == "display_tokens" and value is not None and not (isinstance(value, list)
                                                               and all(isinstance(t, str) for t in value)):
        raise wrong("a list of strings or null")
    if name == "offsets" and value is not None and not (isinstance(value, list) and all(
            p is None or isinstance(p, list) and len(p) == 2 and all(map(_is_integer, p)) for p in value)):
        raise wrong("a list of [start, end] pairs (or null for special tokens), or null")
    if name == "word_ids" and value is not None and not (isinstance(value, list)
                                                         and all(w is None or _is_integer(w) for w in value)):
        raise wrong("a list of integers (or null for special tokens), or null")
    if name == "label" and isinstance(value, list):     # a multi-label data set's classes
        if not all(map(_is_integer, value)):
            raise wrong("an int, a list of ints or null")
        return value
    optional = {"tolerance_met": (bool,), "evaluations_allowed": (int,), "precision": (str,), "label": (int,),
                "estimated_error": (int, float), "precision_error": (int, float), "id": (int, str),
                "data_id": (int, str), "text": (str,)}
    if name in optional and value is not None and (not isinstance(value, optional[name])
                                                   or isinstance(value, bool) and name != "tolerance_met"):
        raise wrong(" or ".join(t.__name__ for t in optional[name]) + " or null")
    return value


@dataclass
class TimeSplit:
    """Seconds of a run by part: the endpoints (a forward to the layer, one from it), then per model call the
    interpolation, the model (forward and backward) and the accumulation, and the finalization.
    compile: the model calls during which torch.compile made graphs (Engine(compile=...)), their
    own run included; they are not in `model`."""
    endpoints: float = 0.0
    interpolate: float = 0.0
    model: float = 0.0
    compile: float = 0.0
    accumulate: float = 0.0
    finalize: float = 0.0
    total: float = 0.0

    def add(self, other: "TimeSplit") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class RunStats:
    """How a run went. `to_dict` gives the JSON keys of result.json (the memory fields flat;
    tolerance with n_steps="auto", accuracy with n_steps=None, max_steps with either)."""
    device: str
    precision: str
    attention: str
    retains_cpu_memory: bool
    fallbacks: int                  # chunks redone in fp32 after low precision gave inf or nan
    documents_per_group: list       # documents sharing model calls, group by group
    chunk_size: list                # the largest call of each group, in sequences
    model_calls: int
    memory: MemoryStats
    seconds: TimeSplit
    token_steps_per_s: float
    tolerance: float | None = None  # n_steps="auto"
    accuracy: float | None = None   # n_steps=None
    max_steps: int | None = None
    compile: str | None = None      # the torch.compile mode of the step, None when not compiled

    def to_dict(self) -> dict:
        values = asdict(self)
        values.update(values.pop("memory"))
        return {k: v for k, v in values.items() if v is not None or k not in ("tolerance", "accuracy", "max_steps")}


# repr() shows this many documents, a line each; IPython computes it for every result it displays, with the HTML.
REPR_DOCUMENTS = 5
# A notebook shows this many documents' rows: a row is ~78 bytes of HTML a token (23.7 KB for 300 tokens),
# so a table of 25,000 reviews would send ~590 MB to the browser.
NOTEBOOK_ROWS = 50


def _stack_if_even(rows: list[torch.Tensor]):
    return torch.stack(rows) if len({r.shape for r in rows}) == 1 else rows


@dataclass(repr=False)
class Attribution:
    """The result of `Engine.attribute` for B documents, all on CPU.

    documents: B DocumentResult records. attributions: [B, L, H] fp32 (a list of [L_i, H]
    when lengths differ; None with keep_attributions=False). stats: RunStats. labels: the model's
    class names by id as a string ({"0": "negative", ...}: its config's id2label).
    The per-document fields as batches, built from the records: token_scores [B, L] (or a
    list of [L_i]), tokens (B lists), input_ids [B, L] long (or a list), delta, prediction,
    target, output_at_input, output_at_baseline [B], probs [B, C], integrand [B, n] at alphas
    [n]. With n_steps None or "auto" alphas and integrand are per document (lists; integrand
    [B, n] when all used the same number of points).
    """
    documents: list
    attributions: torch.Tensor | list | None
    n_steps: int | str
    method: str
    output: str
    stats: RunStats
    labels: dict = field(default_factory=dict)
    token_scores: torch.Tensor | list = field(init=False)
    tokens: list = field(init=False)
    input_ids: torch.Tensor | list = field(init=False)
    delta: torch.Tensor = field(init=False)
    prediction: torch.Tensor = field(init=False)
    probs: torch.Tensor = field(init=False)
    target: torch.Tensor = field(init=False)
    output_at_input: torch.Tensor = field(init=False)
    output_at_baseline: torch.Tensor = field(init=False)
    integrand: torch.Tensor | list = field(init=False)
    alphas: torch.Tensor | list = field(init=False)

    def __post_init__(self):
        docs = self.documents
        self.token_scores = _stack_if_even([d.token_scores for d in docs])
        self.tokens = [d.tokens for d in docs]
        self.input_ids = _stack_if_even([d.input_ids for d in docs])
        self.probs = torch.stack([d.probs for d in docs])
        for name, dtype in (("delta", torch.float32), ("prediction", torch.long), ("target", torch.long),
                            ("output_at_input", torch.float32), ("output_at_baseline", torch.float32)):
            setattr(self, name, torch.tensor([getattr(d, name) for d in docs], dtype=dtype))
        per_document = self.n_steps is None or self.n_steps == "auto"
        self.integrand = (_stack_if_even([d.integrand for d in docs]) if per_document
                          else torch.stack([d.integrand for d in docs]))
        self.alphas = [d.alphas for d in docs] if per_document else docs[0].alphas

    def __len__(self) -> int:
        return len(self.documents)

    def __repr__(self) -> str:
        """The call in one line and its first REPR_DOCUMENTS documents in one each (DocumentResult.summary)."""
        kept = self.attributions
        shape = (None if kept is None else list(kept.shape) if isinstance(kept, torch.Tensor)
                 else f"{len(kept)} tensors [L_i, {kept[0].shape[-1]}]")
        # The default call: the accuracy asked for, not n_steps=None
        steps = f"accuracy={self.stats.accuracy:g}" if self.n_steps is None else f"n_steps={self.n_steps!r}"
        lines = [f"Attribution(documents={len(self)}, {steps}, method={self.method!r}, "
                 f"output={self.output!r}, attributions={shape}, seconds={self.stats.seconds.total:.2f})"]
        lines += [f"  [{i}] {d.summary(self.labels)}" for i, d in enumerate(self.documents[:REPR_DOCUMENTS])]
        if len(self) > REPR_DOCUMENTS:
            lines.append(f"  ... and {len(self) - REPR_DOCUMENTS} more: result.documents")
        return "\n".join(lines)

    def top_bottom(self, doc: int = 0, k: int = 20) -> tuple[list[RankedToken], list[RankedToken]]:
        """The k most positive and k most negative tokens of document `doc`."""
        return self.documents[doc].top_bottom(k)

    def words(self, doc: int = 0, tokens: bool = False) -> list[Word]:
        """Document `doc`'s words, each scoring the sum of its pieces (DocumentResult.words)."""
        return self.documents[doc].words(tokens)

    def top_bottom_words(self, doc: int = 0, k: int = 20,
                         tokens: bool = False) -> tuple[list[RankedWord], list[RankedWord]]:
        """The k words of document `doc` scoring most toward its target and the k most away from it, as
        `fastig attribute` prints them (DocumentResult.top_bottom_words)."""
        return self.documents[doc].top_bottom_words(k, tokens)

    def to_captum_record(self, doc: int = 0, true_label=None):
        """Document `doc` as captum.attr.visualization.VisualizationDataRecord, for visualize_text."""
        from captum.attr import visualization

        d = self.documents[doc]
        return visualization.VisualizationDataRecord(d.token_scores, d.probability, d.prediction, true_label,
                                                     d.target, float(d.token_scores.sum()), d.shown_tokens, d.delta)

    def _repr_html_(self) -> str:
        """Captum's visualize_text table of the documents (the first NOTEBOOK_ROWS), for notebooks."""
        table = captum_record_table(self.documents[:NOTEBOOK_ROWS], self.labels)
        more = len(self.documents) - NOTEBOOK_ROWS
        return table + (f"<p>and {more} more documents: <code>result.documents</code>, or "
                        "<code>fastig report</code> of its result.json</p>" if more > 0 else "")

    def to_dict(self, k: int = 20) -> dict:
        """JSON-ready: the settings, the run's statistics and each document's record (no hidden-size tensors)."""
        return {"n_steps": self.n_steps, "method": self.method, "output": self.output, "stats": self.stats.to_dict(),
                "labels": self.labels, "documents": [d.to_json(k) for d in self.documents]}

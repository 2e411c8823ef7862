"""`fastig.Engine`: layer Integrated Gradients for a Hugging Face classifier.

`attribute` reads top to bottom: documents are built from the inputs, grouped (documents of
similar length share model calls), and each group goes through three parts: its endpoints
(fastig.forward), the integration of the model step along the path (fastig.integrate, or
fastig.adaptive for n_steps="auto"), each process taking its share of the steps
(fastig.processes), and the finalization into one DocumentResult per document.
"""

import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import partial
from itertools import accumulate

import torch
from torch import nn

from . import kernels, quadrature
from .adaptive import INITIAL_POINTS, check_auto, integrate_adaptive
from .big_bird import attention_kind, block_sparse_kept, full_attention_limit
from .compiled import check_mode
from .errors import InputError, Interrupted, MemoryBudgetError, MethodError, NonFiniteError
from .first_token import first_token_only
from .forward import Endpoints, ModelStep, batch_of, document_logits, endpoints, layer_width
from .inputs import Document, build_documents
from .integrate import FP32, PathIntegral, integrate_path
from .longformer import banded_attention
from .options import ATTENTIONS, CAPTUM_DEFAULT_STEPS, DEFAULT_ACCURACY, DEFAULT_MAX_STEPS, DEFAULT_TOLERANCE, uses_default_path
from .models import (attributing, check_target, check_vocabulary, check_weights, find_layer, label_names,
                     model_and_tokenizer, model_length, named_classes, output_values, probability_output,
                     recomputable_layers, resolve_output, several_targets)
from .precision import Precision, default_path_precision, resolve
from .processes import OneProcess
from .result import Attribution, DocumentResult, RunStats, TimeSplit
from .scheduler import (DEFAULT_MEMORY_BUDGET, RetainedHeapBound, Scheduler, chunk_size_override,
                        cpu_memory_retained, host_memory_available, pack, retained_cpu_memory)
from .summarize import normalized
from .targeted import FIRST_ROUND, check_accuracy, integrate_to_accuracy

def _check_settings_apply(n_steps, method: str | None, precision: str, tolerance: float, accuracy: float,
                          max_steps: int) -> None:
    """A setting of another rule than the call's is refused: it was ignored (accuracy=1e-3 with n_steps=50
    ran 50 steps and said nothing)."""
    asked = ", ".join(f"{name}={value!r}" for name, value, default in (
        ("n_steps", n_steps, None), ("method", method, None), ("precision", precision, "auto")) if value != default)
    if accuracy != DEFAULT_ACCURACY and not uses_default_path(n_steps, method, precision):
        raise MethodError(f"accuracy={accuracy!r} is for the default call, without n_steps, method and precision "
                          f"(here {asked}: Captum's computation); leave accuracy out, or those")
    if tolerance != DEFAULT_TOLERANCE and n_steps != "auto":
        raise MethodError(f"tolerance={tolerance!r} is for n_steps='auto' (here n_steps={n_steps!r}); the default "
                          "call takes accuracy=")
    if max_steps != DEFAULT_MAX_STEPS and not (n_steps == "auto" or uses_default_path(n_steps, method, precision)):
        raise MethodError(f"max_steps={max_steps!r} bounds the default call and n_steps='auto'; {asked} takes "
                          "exactly its steps")


@dataclass(frozen=True)
class Rule:
    """How each path is integrated: a fixed rule (method, alphas and weights [n] fp32); n_steps=None,
    the default (method "clenshawcurtis", nested levels until `accuracy`, fastig.targeted); or n_steps="auto"
    (method "auto": adaptive until `tolerance`). Both stop at max_steps evaluations."""
    method: str
    alphas: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    tolerance: float | None = None
    accuracy: float | None = None
    max_steps: int | None = None

    @classmethod
    def of(cls, n_steps, method: str | None, precision: str, tolerance: float, accuracy: float,
           max_steps: int) -> "Rule":
        _check_settings_apply(n_steps, method, precision, tolerance, accuracy, max_steps)
        if uses_default_path(n_steps, method, precision):
            check_accuracy(accuracy, max_steps)
            return cls("clenshawcurtis", accuracy=accuracy, max_steps=max_steps)
        if n_steps == "auto":
            check_auto(tolerance, max_steps)
            return cls("auto", tolerance=tolerance, max_steps=max_steps)
        method = method or "gausslegendre"
        n_steps = CAPTUM_DEFAULT_STEPS if n_steps is None else n_steps
        return cls(method, *quadrature.rule(method, n_steps))

    @property
    def auto(self) -> bool:
        return self.method == "auto"

    @property
    def targeted(self) -> bool:
        return self.accuracy is not None

    @property
    def steps_per_document(self) -> int:
        """The evaluations per document that packing plans with (auto, targeted: the first round)."""
        if self.targeted:
            return FIRST_ROUND + 1
        return INITIAL_POINTS if self.auto else len(self.alphas)


@dataclass
class GroupCalls:
    """What a call keeps of a group of documents besides its records: its size, model calls and times.

    Not the group's PathIntegral: its [G, L, H] tensors (on the device) kept to the end of the call grew the
    call's memory by two attribution sizes a document (3.4 GB over 768 documents of 512 tokens, hidden 768,
    with keep_attributions=False too), outside the memory budget."""
    documents: int
    sequences_per_call: list
    fallbacks: int
    seconds: TimeSplit


class TimeLeft:
    """The time left of work counted in tokens: at the pace of its tokens done so far, counting down between
    updates, as tqdm writes times ("01:07"; "?" before any). Work done longest first (a call's groups, a data
    set's shards) made tqdm's own estimate, by documents, overstate it (1:44:42 after the first of 300 film
    synopses, whose mean is a sixth of the first's length). clock: None, time.perf_counter."""

    def __init__(self, tokens: int, clock=None):
        self.clock = clock or (lambda: time.perf_counter())
        self.tokens, self.tokens_done, self.started = tokens, 0, self.clock()
        self.estimate, self.estimated_at = None, self.started

    def done(self, tokens: int) -> None:
        self.tokens_done += tokens
        self.estimated_at = self.clock()
        self.estimate = (self.estimated_at - self.started) * (self.tokens - self.tokens_done) / self.tokens_done

    def __str__(self) -> str:
        from tqdm import tqdm

        if self.estimate is None:
            return "?"
        return tqdm.format_interval(max(0.0, self.estimate - (self.clock() - self.estimated_at)))


def shown_live(bar_class) -> bool:
    """Whether a bar of this tqdm class is seen as it changes: a notebook's widget (tqdm.auto's class there is
    its own subclass of tqdm.notebook's, named "tqdm.auto": taken for a log file before this version, a
    notebook's bar moved every 30 s) or a terminal."""
    return any(cls.__module__ == "tqdm.notebook" for cls in bar_class.__mro__) or sys.stderr.isatty()


class Progress:
    """A progress bar in documents, with the model evaluations done so far moving after every model call,
    so that a long document shows its progress too, and the time left by tokens (TimeLeft)."""

    def __init__(self, tokens: list[int], description: str = "attributing", delay: float = 0.0):
        from tqdm.auto import tqdm

        # Written to a file (a cluster job's log), not a terminal or a notebook: a line every LOG_INTERVAL_S, not
        # after every model call (a data set's log took a line per call), and in the first row under another bar
        # (`fastig dataset`'s): nested, its every line moved the cursor up, "^[[A" in the log.
        interactive = shown_live(tqdm)
        self.bar = tqdm(total=len(tokens), unit="doc", desc=description, leave=False, delay=delay,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
                        **({} if interactive else {"position": 0}))
        self.evaluations, self.left = 0, TimeLeft(sum(tokens))
        self.shown_from = time.perf_counter() + delay     # tqdm's delay holds back its updates, not a refresh
        self.every = 0.0 if interactive else LOG_INTERVAL_S
        self.bar.mininterval = max(self.bar.mininterval, self.every)
        self.refreshed = -math.inf

    def _show(self, refresh: bool) -> None:
        now = time.perf_counter()
        refresh = refresh and now >= self.shown_from and now - self.refreshed >= self.every
        self.refreshed = now if refresh else self.refreshed
        self.bar.set_postfix_str(f"{self.evaluations} model evaluations, {self.left} left", refresh=refresh)

    def evaluated(self, pairs: int) -> None:
        self.evaluations += pairs
        self._show(refresh=True)

    def documents_done(self, count: int, tokens: int) -> None:
        self.left.done(tokens)
        self._show(refresh=False)
        self.bar.update(count)

    def close(self) -> None:
        self.bar.close()


PROGRESS_DELAY_S = 10.0    # progress=None: a call that runs longer shows its bar
LOG_INTERVAL_S = 30.0      # a bar written to a file, not a terminal: a line at most this often


def progress_bar(progress: bool | None, tokens: list[int], shown_here: bool = True) -> Progress | None:
    """The bar of a call over documents of these lengths: with progress True from its start, with None once
    it has run PROGRESS_DELAY_S (a long call showed nothing for its hours unless asked), where shown_here (the
    first of several processes)."""
    if progress or progress is None and shown_here:
        return Progress(tokens, delay=0.0 if progress else PROGRESS_DELAY_S)
    return None


# A bound on a layer's output width (values per token) that no classifier fastig runs reaches (BERT-large:
# 1,024; the widest transformers encoders: 4,096-8,192): below it no measurement of the layer is needed.
WIDEST_LAYER = 16_384


def _finite(document: DocumentResult, attributions: torch.Tensor | None) -> bool:
    """Whether F, the delta and the attributions (not kept: their token sums, normalized) are all finite."""
    values = document.token_scores if attributions is None else attributions
    return all(map(math.isfinite, (document.output_at_input, document.output_at_baseline, document.delta))) \
        and bool(torch.isfinite(values).all())


def _whole_finite_texts(records: list, per_text: list[int], stacked: torch.Tensor | None) -> tuple[list, list, object]:
    """The texts whose (record, attributions) pairs are all done and finite, those pairs (each record's id its
    text's index), and their attributions as a view of `stacked` where they lead it. Records are text-major,
    per_text[k] to text k; n_steps="auto" runs each (text, target) pair alone, so a call may stop between a
    text's pairs; a nan is never a result."""
    starts = list(accumulate(per_text, initial=0))
    texts = [records[start:end] for start, end in zip(starts, starts[1:])]
    whole = [k for k, pairs in enumerate(texts) if None not in pairs and all(_finite(*pair) for pair in pairs)]
    done = [(replace(record, id=k) if record.id is None else record, attributions)
            for k in whole for record, attributions in texts[k]]
    # Documents of one length are done in order: a leading run's rows are a view of the call's tensor (a copy
    # could need more host memory than the call had left).
    return whole, done, stacked[:len(done)] if stacked is not None and whole == list(range(len(whole))) else None


def _packing_key(doc: Document, attention: str | None, targets: int):
    """Documents share model calls only with the same kind of baseline (ids, or a constant layer output), the
    same model arguments (a pair's token types), the attention they get alone (fastig.big_bird) and as many
    targets; None: the document goes alone."""
    if isinstance(doc.baseline_embedding, torch.Tensor):
        return None
    return ("ids" if doc.baseline_ids is not None else doc.baseline_embedding, tuple(doc.model_kwargs), attention,
            targets)


def resolve_device(name, argument: str = "device=") -> torch.device:
    """The device named (a str or torch.device; None: the first GPU if there is one, else the CPU), refused at
    once where this machine has none such (`argument` names it as the caller writes it)."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"{argument}{name!r} is not a device: give cpu, cuda or cuda:N (or mps)") from err
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        found = f"{torch.cuda.device_count()} CUDA devices" if torch.cuda.is_available() else "no CUDA device"
        raise InputError(f"{argument}{name!r}: this machine has {found}; use {argument}'cpu'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{argument}{name!r}: this machine has no MPS device; use {argument}'cpu'")
    return device


class Engine:
    """Integrated Gradients on a layer of a sequence classifier (by default its embeddings).

    model: a Hugging Face sequence classifier (float32 weights; each call runs it in eval mode and gives it
    back its modes), its folder or hub name (loaded by fastig.load_classifier), a text-classification
    pipeline, or a DataParallel of it. tokenizer: its
    tokenizer (or its folder or hub name; None: the named model's or the pipeline's), or None when
    inputs are ids. layer: None (the embeddings module), a dotted module name
    or a module. precision: "fp32", "bf16" or "fp16" for the model's forward during the
    steps (accumulation is always fp32), or "auto" (bf16 or fp16 on GPUs, fp32 on CPU; see
    fastig.precision). memory_budget: the peak memory the attribution may reach, in bytes
    (an int, or "6GB", "512MiB") or as a share of the memory free now ("80%", the default
    for None); on CPU it bounds the process's resident memory, on CUDA the memory torch
    allocates on the device. device: where to run; None keeps the model where it is.
    attention: "banded" runs Longformer self-attention as blocked banded attention during
    attribution (fastig.longformer: the same function, faster, less memory); "model" keeps
    the model's own. Other models are not affected.
    processes: fastig.processes.AllProcesses when several launched processes share each
    document's steps; None for a run in this process alone.
    compile: None, or a torch.compile mode ("default", "reduce-overhead": CUDA graphs, "max-autotune",
    "max-autotune-no-cudagraphs") the model step's transformer layers run through (fastig.compiled);
    the calls that compiled are timed apart (stats.seconds.compile). For GPUs: on the 2-core EPYC the
    compiled step was 1.00-1.06x the eager one, after 18 s of compilation.
    """

    def __init__(self, model, tokenizer=None, layer: str | nn.Module | None = None,
                 precision: str = "auto", memory_budget=None, device=None, attention: str = "banded",
                 processes: OneProcess | None = None, compile: str | None = None):
        if attention not in ATTENTIONS:
            raise InputError(f"attention={attention!r} is unknown; allowed: {', '.join(ATTENTIONS)}")
        check_mode(compile)
        model, tokenizer = model_and_tokenizer(model, tokenizer)
        check_weights(model)
        self.attention, self.compile = attention, compile
        self.requested_precision = precision
        self.precision = resolve(precision, resolve_device(device) if device is not None
                                 else next(model.parameters()).device)
        if device is not None:
            model.to(device)
        self.model = model
        self.tokenizer = tokenizer
        check_vocabulary(model, tokenizer)
        self.layer = find_layer(model, layer)
        self.device = next(model.parameters()).device
        self.scheduler = Scheduler(self.device, DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget,
                                   recomputable_layers=len(recomputable_layers(model)))
        self.processes = processes or OneProcess()
        # Across calls: where glibc keeps freed memory for good (the commands), the heap grows from call to call.
        self.heap = RetainedHeapBound() if self.device.type == "cpu" else None

    def __repr__(self) -> str:
        """What the engine runs, in one line (a notebook showed an object address)."""
        layer = next((name for name, module in self.model.named_modules() if module is self.layer), "?")
        budget = "unbounded" if self.scheduler.budget is None else f"{self.scheduler.budget / 1e9:.1f} GB"
        return (f"Engine({type(self.model).__name__}, layer={layer!r}, device={str(self.device)!r}, "
                f"precision={self.requested_precision!r}, attention={self.attention!r}, memory budget {budget}"
                f"{f', compile={self.compile!r}' if self.compile else ''})")

    def documents(self, texts_or_ids, baseline="pad", max_length: int | None = None) -> list[Document]:
        """The documents `attribute` would build: ids, baselines, model arguments, tokens."""
        return build_documents(texts_or_ids, self.tokenizer, self.model.config, baseline, max_length)

    def probabilities(self, texts_or_ids, max_length: int | None = None) -> torch.Tensor:
        """[B, C] fp32 on the CPU: each document's class probabilities as its record's `probs` shows them (the
        text-classification pipeline's: softmax, each label's sigmoid on a multi-label model), from one forward
        per document: what the model predicts before anything is explained (a multi-label model's labels above
        1/2, which target=None, the top one, leaves out). Texts and ids as `attribute` takes them."""
        docs = self.documents(texts_or_ids, max_length=max_length)
        with attributing(self.model), banded_attention(self.model) if self.attention == "banded" else nullcontext():
            logits = torch.cat([document_logits(self.model, doc) for doc in docs])
        return output_values(logits.float(), probability_output(self.model.config)).cpu()

    @torch.inference_mode(False)    # gradients in any caller's context (an evaluation loop's inference mode)
    def attribute(self, texts_or_ids, target=None, n_steps: int | str | None = None, method: str | None = None,
                  baseline="pad", output: str | None = None, chunk_size: int | None = None,
                  max_length: int | None = None, progress: bool | None = None,
                  tolerance: float = DEFAULT_TOLERANCE, max_steps: int = DEFAULT_MAX_STEPS,
                  accuracy: float = DEFAULT_ACCURACY, keep_attributions: bool = True) -> Attribution:
        """Attribute F = output[target] of each document to the layer's output.

        texts_or_ids: a str, a list of str (an item may be a pair of texts, (A, B), for a classifier of
        pairs; any sequence of them), a LongTensor [B, L] / [L] of ids holding the special tokens and no
        padding (or such ids as lists: tokenizer.encode's, or a list of them), or a tokenizer's output (its
        attention mask leaves the padding out). target: None (predicted
        class), an int or a label name ("positive", from config.id2label or label2id), or one per document;
        "all" or one list of classes per document for several.
        baseline: "pad" | "unk" | "mask" (CLS + token * n + SEP), "zeros" (zero layer
        output), a LongTensor of ids like the input, or a FloatTensor [L', H] layer output.
        output: "probs" (softmax, the seed's choice; on a multi-label model each label's sigmoid), "sigmoid"
        or "logits"; None: probs, or on a one-label model (a regression head, a cross-encoder's score)
        logits, as its softmax is constant. chunk_size: sequences
        (document steps) per model call instead of the memory budget's choice.
        max_length: text tokens kept per text. Documents of similar length share model
        calls; each result equals the one the document gets alone.
        The default (n_steps, method None and the Engine's precision "auto"): as many evaluations,
        and the precision, as each document's attributions need to be within `accuracy` relative
        L2 error of the converged fp32 result, by estimates (fastig.targeted); at most max_steps
        evaluations. Asking for n_steps=N, a method or a precision gives Captum's computation
        instead: `method` (default gausslegendre) with N points (default 50, as in Captum).
        n_steps="auto": adaptive quadrature (fastig.adaptive) per document until
        |delta| <= tolerance * |F(x) - F(b)| or max_steps model evaluations; `method` is not used.
        With the default or "auto" each document's record holds its points, evaluations and whether
        the target was met (the default: also its precision and estimated errors).
        keep_attributions: False gives the records and token scores without the [L, H] attributions
        (result.attributions is None), for many documents: those are held in host memory until the call
        returns, and a call whose attributions cannot fit there is refused before any work.
        progress: True, a bar (documents, model evaluations, time left); False, none; None, a bar once the
        call has run PROGRESS_DELAY_S (10 s), in the first of several processes.
        Stopped midway, nothing done is lost: an interrupt raises fastig.Interrupted, whose .result holds the
        whole, finite documents done (None if none); any other exception is raised as it was, with that .result
        where some were done.
        """
        output = resolve_output(output, self.model.config)
        target = named_classes(target, self.model.config)
        chunk_size_override(chunk_size)
        rule = Rule.of(n_steps, method, self.requested_precision, tolerance, accuracy, max_steps)
        docs = self.documents(texts_or_ids, baseline, max_length)
        n_classes = self.model.config.num_labels
        several = several_targets(target, len(docs), n_classes)
        per_text = [1] * len(docs) if several is None else [len(row) for row in several]   # records, text-major
        if several is None:
            targets = check_target(target, len(docs), n_classes)
        elif rule.auto:     # each pair integrated as a document of its own
            docs = [doc for doc, row in zip(docs, several) for _ in row]
            targets = [t for row in several for t in row]
        else:               # a document's forwards shared by its targets (each pair still stops on its own)
            targets = several
        per_document = per_text if several is not None and not rule.auto else [1] * len(docs)
        if keep_attributions:
            self._check_host_memory(docs, per_document)
        self.scheduler.start_run()

        # Each record's share of its document's model evaluations (its document's targets share its forwards), and
        # those of the records of some texts (kept when a call stops).
        shares = [1 / count for count in per_document for _ in range(count)]
        first_slot, text_first = list(accumulate(per_document, initial=0)), list(accumulate(per_text, initial=0))

        def shares_of(texts: list[int]) -> list[float]:
            return [shares[j] for k in texts for j in range(text_first[k], text_first[k + 1])]

        bar = progress_bar(progress, [len(doc.input_ids) for doc in docs], shown_here=self.processes.rank == 0)
        records, groups, seconds, retains_memory = [None] * first_slot[-1], [], TimeSplit(), False
        # Where every (document, target) pair has one length, their attributions are written into one tensor
        # as each group ends: stacked at the end of the call, they were held twice.
        same_length, stacked = keep_attributions and len({len(doc.input_ids) for doc in docs}) == 1, None
        build = partial(self._result, rule=rule, n_steps=n_steps, output=output, keep_attributions=keep_attributions)
        try:
            # The model without dropout or a caller's autocast (attributing); on CPU glibc keeps freed memory for
            # reuse during the call only (scheduler.retained_cpu_memory); the last layer computes only the first
            # token, which the classifier reads (fastig.first_token).
            with (attributing(self.model), retained_cpu_memory() if self.device.type == "cpu" else nullcontext(),
                  banded_attention(self.model) if self.attention == "banded" else nullcontext(),
                  block_sparse_kept(self.model), first_token_only(self.model, self.layer)):
                retains_memory = self.device.type == "cpu" and cpu_memory_retained()
                for group in self._groups(docs, rule, chunk_size, per_document):
                    # Parameters keep requires_grad: autograd.grad(F, z) already skips weight gradients, and
                    # freezing them made HF Longformer's sliding-chunk attention 1.6x slower on CPU.
                    results, calls = self._attribute_group([docs[i] for i in group], [targets[i] for i in group],
                                                           rule, output, chunk_size, bar, keep_attributions)
                    if bar is not None:
                        bar.documents_done(len(group), sum(len(docs[i].input_ids) for i in group))
                    groups.append(calls)
                    seconds.add(calls.seconds)
                    if self.heap is not None:
                        self.heap.group_done()
                    slots = [first_slot[i] + t for i in group for t in range(per_document[i])]
                    for i, (record, attributions) in zip(slots, results):
                        if same_length:
                            if stacked is None:
                                stacked = attributions.new_empty((len(records), *attributions.shape))
                            stacked[i] = attributions
                            attributions = stacked[i]
                        records[i] = (record, attributions)
        except (KeyboardInterrupt, Exception) as stop:
            # A notebook's interrupt, or an error after some groups (memory, the model failing on one document):
            # the documents done are kept, named by index; hours of a call's work were lost with it before.
            whole, done, rows = _whole_finite_texts(records, per_text, stacked)
            kept = build(done, groups, seconds, retains_memory, shares_of(whole), stacked=rows) if done else None
            said = (f"{len(whole)} of {len(per_text)} documents were done before the {{}}: their records "
                    "(each with its document's index as .id) are in this exception's .result")
            if isinstance(stop, KeyboardInterrupt):
                raise Interrupted(said.format("interrupt"), kept) from stop
            if kept is not None and getattr(stop, "result", None) is None:
                stop.result = kept
                stop.add_note(f"fastig: {said.format('error')}")
            raise
        finally:
            if bar is not None:
                bar.close()

        if not all(_finite(*pair) for pair in records):
            whole, done, rows = _whole_finite_texts(records, per_text, stacked)
            not_finite = sorted(set(range(len(per_text))) - set(whole))
            kept = build(done, groups, seconds, retains_memory, shares_of(whole), stacked=rows) if done else None
            raise NonFiniteError(f"documents {not_finite}: the model's output or its gradient is not finite "
                                 "(nan or inf) there, so no attribution is given; the model or its inputs are "
                                 "broken for them (the other documents' records, each with its document's index "
                                 "as .id, are in the error's .result)", not_finite, kept)
        return build(records, groups, seconds, retains_memory, shares, stacked=stacked)


    def _result(self, records: list, groups: list, seconds: TimeSplit, retains_memory: bool, shares: list[float],
                rule: Rule, n_steps, output: str, keep_attributions: bool,
                stacked: torch.Tensor | None = None) -> Attribution:
        """The Attribution of these (record, attributions) pairs, with the stats of the groups that made them;
        shares: each record's share of its document's model evaluations; stacked: their attributions in one
        tensor, where they are in one."""
        documents = [record for record, _ in records]
        token_steps = sum(len(d.tokens) * d.evaluations * share for d, share in zip(documents, shares))  # the model's
        stats = RunStats(device=str(self.device), precision=self.precision.name, attention=self.attention,
                         retains_cpu_memory=retains_memory, fallbacks=sum(group.fallbacks for group in groups),
                         documents_per_group=[group.documents for group in groups],
                         chunk_size=[max(group.sequences_per_call) for group in groups],
                         model_calls=sum(len(group.sequences_per_call) for group in groups),
                         memory=self.scheduler.run_stats(), seconds=seconds,
                         token_steps_per_s=token_steps / max(seconds.total, 1e-12),
                         tolerance=rule.tolerance, accuracy=rule.accuracy, max_steps=rule.max_steps,
                         compile=self.compile)
        attributions = [a for _, a in records]
        if not keep_attributions:
            attributions = None
        elif stacked is not None:
            attributions = stacked
        elif len({a.shape for a in attributions}) == 1:    # those done before an interrupt, not in order
            attributions = torch.stack(attributions)
        return Attribution(documents=documents, attributions=attributions,
                           n_steps=len(rule.alphas) if rule.alphas is not None else n_steps, method=rule.method,
                           output=output, stats=stats,
                           labels=label_names(self.model.config))

    def _check_host_memory(self, docs: list[Document], per_document: list[int]) -> None:
        """Refuse, before any work, a call whose [L, H] fp32 attributions cannot all be held in host memory:
        it would die at its end, its work lost.
        The layer's width H is measured (a forward of one document up to the layer) only where a bound on it
        leaves the question open."""
        available = host_memory_available()
        tokens = sum(len(doc.input_ids) * count for doc, count in zip(docs, per_document))
        if available is None or tokens * WIDEST_LAYER * 4 <= available:
            return
        width = layer_width(self.model, self.layer, min(docs, key=lambda doc: len(doc.input_ids)))
        needed = tokens * width * 4
        if needed > available:
            raise MemoryBudgetError(
                f"the attributions of these {len(docs)} documents ({tokens:,} tokens x {width} values, fp32) need "
                f"about {needed / 2**30:.3g} GiB of host memory and {available / 2**30:.3g} GiB is available: pass "
                "keep_attributions=False (the records and token scores without them), attribute fewer documents "
                "per call, or use `fastig dataset` (written shard by shard, resumable)")

    def _groups(self, docs: list[Document], rule: Rule, chunk_size: int | None, targets_of: list[int]):
        """Indices of the documents that share model calls, group by group, longest first; only documents of as
        many targets (targets_of) share calls.

        Longest first: the first call at a length probes its memory, and shorter ones scale from
        it. A group's size depends on the probes of the groups before it, so groups come one at a time.
        """
        model_lengths = [model_length(self.model.config, len(doc.input_ids)) for doc in docs]
        order = sorted(range(len(docs)), key=lambda i: (-model_lengths[i], targets_of[i]))
        limit = full_attention_limit(self.model)
        lengths = [model_lengths[i] for i in order]
        keys = [_packing_key(docs[i], attention_kind(limit, len(docs[i].input_ids)), targets_of[i]) for i in order]
        first = 0
        while first < len(order):
            sequences = self.scheduler.sequences_per_call(lengths[first], chunk_size)
            # The processes' budgets differ; their groups must not.
            count = self.processes.agree(pack(lengths[first:], keys[first:], sequences, rule.steps_per_document))
            yield order[first:first + count]
            first += count

    def _attribute_group(self, docs: list[Document], targets: list, rule: Rule, output: str, chunk_size, bar,
                         keep_attributions: bool = True):
        """[(DocumentResult, attributions [L, H] fp32 or None)] for a group of documents, and its GroupCalls."""
        t0 = time.perf_counter()
        batch = batch_of(docs, self.model.config.pad_token_id or 0, self.device)
        ends = endpoints(self.model, self.layer, batch, docs, targets, output)
        step = ModelStep(self.model, self.layer, batch, ends.target, output, self.scheduler, self.compile)
        t1 = time.perf_counter()
        on_chunk = bar.evaluated if bar is not None else None
        if rule.targeted:
            path = self._integrate_to_accuracy(step, ends, rule, chunk_size, on_chunk)
        elif rule.auto:
            path = self._integrate_adaptive(step, ends, rule, chunk_size, on_chunk)
        else:
            path = self._integrate(step, ends, rule, chunk_size, on_chunk)
        per_document = rule.auto or rule.targeted
        t2 = time.perf_counter()
        # [P, L', H] and [P, L'], P = G (document, target) pairs, G * T with T targets per document;
        # L' > L when the model pads (no attribution there: same ids in x and b)
        attributions, token_sums = kernels.finalize(path.difference, path.gradient_sum)
        f_x, f_b = ends.f_x.reshape(-1), ends.f_b.reshape(-1)
        deltas = token_sums.sum(-1) - (f_x - f_b)
        # One copy to the host per tensor and group, not per document.
        attributions = attributions.cpu() if keep_attributions else None
        token_sums, deltas, predictions, targets_used, probs, f_x, f_b = (
            t.cpu() for t in (token_sums, deltas, ends.logits_x.argmax(-1), ends.target.reshape(-1),
                              output_values(ends.logits_x.float(), probability_output(self.model.config)), f_x, f_b))
        integrand = path.integrand if per_document else path.integrand.cpu()    # per document: on CPU already
        targets_each = len(targets_used) // len(docs)
        results = []
        for row in range(len(targets_used)):        # a (document, target) pair
            d = row // targets_each
            doc, length = docs[d], batch.lengths[d]
            record = DocumentResult(
                tokens=doc.tokens, input_ids=doc.input_ids, special_positions=doc.special_positions,
                token_scores=normalized(token_sums[row, :length]), prediction=int(predictions[d]),
                probs=probs[d], target=int(targets_used[row]), output_at_input=float(f_x[row]),
                output_at_baseline=float(f_b[row]), delta=float(deltas[row]),
                alphas=path.alphas[row] if per_document else rule.alphas,
                integrand=integrand[row],
                evaluations=path.evaluations[row] if per_document else len(rule.alphas),
                **({"tolerance_met": path.met[row], "evaluations_allowed": path.evaluations_allowed}
                   if per_document else {}),
                **({"precision": path.precision[row], "estimated_error": path.estimated_error[row],
                    "precision_error": path.precision_error[row]} if rule.targeted else {}),
                truncated_tokens=doc.truncated_tokens, display_tokens=doc.display_tokens, text=doc.text,
                offsets=doc.offsets, word_ids=doc.word_ids)
            kept = attributions[row, :length] if keep_attributions else None
            # A row narrower than its group's tensor is copied out: as a view it kept that tensor, padding and
            # all, to the end of the call (a 100-token document under Longformer's 512 window: 5x its size).
            results.append((record, kept.clone() if kept is not None and length < attributions.shape[1] else kept))
        path.seconds.endpoints = t1 - t0
        path.seconds.finalize = time.perf_counter() - t2
        path.seconds.total = time.perf_counter() - t0
        return results, GroupCalls(len(docs), path.sequences_per_call, path.fallbacks, path.seconds)

    def _integrate(self, step: ModelStep, ends: Endpoints, rule: Rule, chunk_size, on_chunk) -> PathIntegral:
        """The fixed rule along every document's path; each process takes its share of the steps, and every
        process ends with the sums over all."""
        n_steps, processes = len(rule.alphas), self.processes
        mine = processes.items(n_steps)
        path = integrate_path(step, ends.start, ends.end, rule.alphas[mine], rule.weights[mine], self.scheduler,
                              chunk_size, on_chunk=on_chunk, precision=self.precision,
                              targets=ends.targets_each)
        path.integrand = processes.combine(path.integrand, mine, n_steps, dim=1)
        path.outputs = processes.combine(path.outputs, mine, n_steps, dim=1)
        processes.sum(path.gradient_sum)
        return path

    def _points_allowed(self, ends: Endpoints, max_steps: int, least: int) -> int:
        """Points held per document (one fp32 gradient [L, H] each, until the group is summed) within half
        the room the memory budget leaves, at most max_steps and at least `least`; the same in every process."""
        scheduler = self.scheduler
        if scheduler.budget is None:
            return max_steps
        room = (scheduler.budget - scheduler.meter.in_use()) // 2
        point_bytes = ends.end[0].numel() * 4
        return self.processes.agree(max(least, min(max_steps, room // (point_bytes * len(ends.end)))))

    def _evaluate_points(self, step: ModelStep, ends: Endpoints, point_paths: torch.Tensor, point_alphas: torch.Tensor,
                         precision: Precision, chunk_size, on_chunk) -> PathIntegral:
        """F, s and dF/dz at (path, alpha) pairs, each a one-point path from z(alpha), in `precision`; each
        process takes its share of the pairs, and every process ends with all of them. A path is a document,
        or with T targets per document the pair (document p // T, its target p % T): then each (document,
        alpha) pair runs the model once for all T targets (one backward pass each). Their gradients [J, L, H]
        count as held memory until the caller resets scheduler.held_bytes."""
        processes, scheduler, targets = self.processes, self.scheduler, ends.targets_each
        point_docs, pick = point_paths, None
        if targets > 1:     # the distinct (document, alpha) pairs, alphas compared bit for bit
            bits = point_alphas.float().cpu().contiguous().view(torch.int32).long()
            unique, which = torch.unique(torch.stack([point_paths.cpu() // targets, bits]), dim=1, return_inverse=True)
            point_docs = unique[0].to(point_paths.device)
            point_alphas = unique[1].to(torch.int32).contiguous().view(torch.float32)
            pick = which * targets + point_paths.cpu() % targets
        difference = ends.end - ends.start
        mine = processes.items(len(point_docs))
        docs_mine = point_docs[mine]
        point_start = ends.start[docs_mine] + point_alphas[mine].to(self.device)[:, None, None] * difference[docs_mine]
        path = integrate_path(lambda z, rows: step(z, docs_mine[rows]), point_start,
                              point_start + difference[docs_mine], torch.zeros(1, dtype=torch.float32),
                              torch.ones(1, dtype=torch.float32), scheduler, chunk_size, on_chunk=on_chunk,
                              precision=precision, targets=targets)
        scheduler.held_bytes += len(point_paths) * ends.end[0].numel() * 4
        for name in ("gradient_sum", "integrand", "outputs"):
            value = getattr(path, name)         # [mine * T, ...]: pair u's targets together
            value = processes.combine(value.view(len(mine), targets, *value.shape[1:]), mine, len(point_docs))
            value = value.flatten(0, 1)
            setattr(path, name, value if pick is None else value[pick.to(value.device)])
        return path

    def _integrate_adaptive(self, step: ModelStep, ends: Endpoints, rule: Rule, chunk_size, on_chunk):
        """n_steps="auto" along every document's path; each process takes its share of the (document,
        point) pairs of each round."""
        max_steps = self._points_allowed(ends, rule.max_steps, INITIAL_POINTS)

        def evaluate(point_docs, point_alphas):
            return self._evaluate_points(step, ends, point_docs, point_alphas, self.precision, chunk_size, on_chunk)
        try:
            return integrate_adaptive(evaluate, ends.start, ends.end, ends.f_x - ends.f_b, rule.tolerance, max_steps)
        finally:
            self.scheduler.held_bytes = 0

    def _integrate_to_accuracy(self, step: ModelStep, ends: Endpoints, rule: Rule, chunk_size, on_chunk):
        """The default: nested Clenshaw-Curtis levels until each document meets the accuracy (fastig.targeted),
        in the low precision where it is fast and its check passes, else fp32. With several targets per document
        each (document, target) pair is a path of its own, and the pairs of a document share its forwards."""
        name = default_path_precision(self.device)
        pairs = ends.pairs()
        max_steps = self._points_allowed(pairs, rule.max_steps, FIRST_ROUND + 1)

        def evaluate(point_paths, point_alphas, precision):
            return self._evaluate_points(step, ends, point_paths, point_alphas, precision, chunk_size, on_chunk)
        try:
            return integrate_to_accuracy(evaluate, pairs.start, pairs.end, pairs.f_x, pairs.f_b, rule.accuracy,
                                         max_steps, resolve(name, self.device) if name else None, FP32)
        finally:
            self.scheduler.held_bytes = 0

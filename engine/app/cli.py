"""The `fastig` command: attribute, check, demo, dataset, aggregate, report and bench. Errors print one line
and exit 2.

The commands are programs, not library calls: each asks glibc to keep freed memory for reuse for the
whole process (fastig.retain_freed_cpu_memory), where a library call does it only while it runs.
"""

import argparse
import os
import re
import signal
import sys
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

# The parser is built from plain values (fastig.options): `fastig --help` and a mistyped flag answer without
# importing torch; the commands import the core they run.
from ..errors import BaselineError, FastIGError, InputError, Interrupted, OutputError
from ..options import (ATTENTIONS, CAPTUM_DEFAULT_STEPS, COMPILE_MODES, DEFAULT_ACCURACY, DEFAULT_MAX_STEPS,
                       DEFAULT_MEMORY_BUDGET, DEFAULT_TOLERANCE, METHODS, OUTPUTS, PRECISIONS, uses_default_path)
from .text import counted, print_columns, print_result, run_line


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _count(least: int):
    """An argparse type: an int of at least `least` (--top-k -1 printed every word, a negative k never filling
    a list)."""
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or number < least:
            raise argparse.ArgumentTypeError(f"{value}: give an integer of {least} or more")
        return number
    return parse


def _int_or(flag: str, words: dict, allowed: str | None):
    """An argparse type: an int, or one of `words` (read as its value in the dict); with `allowed` None any
    other word too (--target's label names, which the model's config judges once it is loaded)."""
    def parse(value: str):
        if value in words:
            return words[value]
        try:
            return int(value)
        except ValueError:
            if allowed is None:
                return value
            raise argparse.ArgumentTypeError(f"{flag} {value!r}: give {allowed}")
    return parse


_target = _int_or("--target", {"predicted": None, "all": "all"}, None)
_n_steps = _int_or("--n-steps", {"auto": "auto"}, "a number of steps or auto")
_dataset_target = _int_or("--target", {"label": "label", "predicted": "predicted", "all": "all"}, None)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="local folder or hub name of a sequence classifier")
    p.add_argument("--tokenizer", help="tokenizer folder or hub name, if not the model's")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run the model's own Python code, where its config names some (transformers' "
                        "trust_remote_code), for code you trust")
    p.add_argument("--layer", help="dotted module name to attribute to (default: the embeddings)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--attention", default="banded", choices=ATTENTIONS,
                   help="Longformer self-attention: banded (fastig's, the same function, faster) or model (as loaded)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="the model's dtype during the steps; accumulation is always fp32 (default auto: the "
                        "default call takes bf16 where it is fast and its check passes, GPUs and AMX CPUs, else "
                        "fp32; with --n-steps or --method, bf16/fp16 on GPUs and fp32 on CPU)")
    p.add_argument("--compile", choices=COMPILE_MODES,
                   help="run the model step's layers through torch.compile in this mode (reduce-overhead: CUDA "
                        "graphs); for GPUs, its first calls compile (default: eager)")
    p.add_argument("--memory-budget", default=DEFAULT_MEMORY_BUDGET,
                   help="peak memory allowed: bytes such as 6GB or 512MiB, or a share of free memory such as 80%% "
                        "(default: %(default)s)")


def _add_rule_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-steps", type=_n_steps,
                   help="points of the rule, as Captum computes it (with --method; 50 when only --method is given), "
                        "or auto: adaptive until --tolerance is met (default: as many as --accuracy needs)")
    p.add_argument("--accuracy", type=float, default=DEFAULT_ACCURACY,
                   help="without --n-steps, --method and --precision: the attributions' relative L2 error to reach, "
                        "by estimate (default 2e-2)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="with --n-steps auto: the |delta| to reach, as a share of |F(x) - F(b)| (default 1e-3)")
    p.add_argument("--max-steps", type=int, default=DEFAULT_MAX_STEPS,
                   help="without --n-steps or with --n-steps auto: the most model evaluations per document "
                        "(default 1024)")
    p.add_argument("--method", choices=METHODS, help="Captum's rule (default gausslegendre)")
    p.add_argument("--baseline", default="pad", help="pad, unk, mask or zeros (default: pad)")
    p.add_argument("--output", choices=OUTPUTS, help="attribute probabilities (each label's sigmoid on a multi-label "
                                                     "model), sigmoids or logits (default: probabilities; logits "
                                                     "for a model of one label)")
    p.add_argument("--max-length", type=int, help="text tokens kept per document (default: the model's limit)")


def _add_attribution_args(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    _add_rule_args(p)
    p.add_argument("texts", nargs="*", metavar="TEXT",
                   help="documents to explain, in order (then --text, --file, --pair)")
    p.add_argument("--text", action="append", help="a document (repeat for several)")
    p.add_argument("--file", action="append", type=Path,
                   help="a UTF-8 text file holding one document, - for standard input (repeatable)")
    p.add_argument("--pair", action="append", nargs=2, metavar=("FIRST", "SECOND"),
                   help="a pair of texts as one document, for pair classifiers (premise and hypothesis, query "
                        "and passage): the tokenizer's pair template and token types (repeatable)")
    p.add_argument("--target", type=_target, default=None,
                   help="class index or label name, several as 'A,B', 'predicted' (default), or 'all': every "
                        "class; one explanation each")
    p.add_argument("--chunk-size", type=int, help="sequences (document steps) per model call "
                                                  "(default: sized from the memory budget)")
    _add_processes_arg(p, "each document's steps")


def _add_processes_arg(p: argparse.ArgumentParser, shared: str) -> None:
    p.add_argument("--processes", type=int, default=1,
                   help=f"split {shared} over N processes on this machine (runs accelerate launch; "
                        "on several machines use accelerate launch yourself)")


def _versions() -> str:
    """"fastig 0.2.1 (torch 2.13.0, transformers 5.25.0, ...)": what a bug report or a comparison of runs needs,
    read from the installed packages' metadata (importing transformers and captum takes seconds)."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    def installed(name: str) -> str:
        try:
            return f"{name} {version(name)}"
        except PackageNotFoundError:
            return f"no {name}"
    return f"fastig {__version__} ({', '.join(map(installed, ('torch', 'transformers', 'captum', 'triton')))})"


def build_parser() -> argparse.ArgumentParser:
    # Raw: argparse would wrap the version line at the terminal's width
    parser = _Parser(prog="fastig", description="Fast Integrated Gradients for Hugging Face classifiers, checked "
                     "against Captum.", formatter_class=argparse.RawDescriptionHelpFormatter,
                     epilog="Start with `fastig demo` (offline: five movie reviews explained, timed against Captum);\n"
                            "`fastig COMMAND --help` gives a command's options.")
    parser.add_argument("--version", action="version", version=_versions(),
                        help="fastig's version and those of the packages its numbers depend on")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = commands.add_parser("attribute", help="explain documents: prediction, delta, top/bottom words")
    _add_attribution_args(p)
    p.add_argument("--top-k", type=_count(0), default=20,
                   help="words printed at each end per document, and tokens in --out's top and bottom (default 20)")
    p.add_argument("--tokens", action="store_true", help="print the top and bottom tokens, not words")
    p.add_argument("--out", type=Path, help="write the full result as JSON here")

    p = commands.add_parser("check", help="run fastig and Captum on the same input and compare")
    _add_attribution_args(p)
    p.add_argument("--internal-batch-size", type=_count(1),
                   help="Captum's internal_batch_size (default: all steps at once)")

    p = commands.add_parser("demo", help="explain movie reviews with the embedded model, timed against Captum")
    p.add_argument("--out", type=Path, default=Path("fastig-demo"), help="folder for the JSON and CSV outputs")
    p.add_argument("--n-steps", type=int, help="steps for both fastig and Captum (default: fastig's default call "
                                                "against Captum's default, 50 steps)")
    p.add_argument("--documents", type=_count(1), default=5, help="held-out reviews to explain")
    p.add_argument("--top-k", type=_count(0), default=8)

    p = commands.add_parser("dataset", help="attribute a whole data set into resumable shards")
    _add_model_args(p)
    _add_rule_args(p)
    p.add_argument("--data", required=True,
                   help="a CSV, TSV, JSONL or parquet file, a folder written by save_to_disk, or a hub data set name")
    p.add_argument("--split", default="test", help="split of a save_to_disk folder or hub data set (default: test)")
    p.add_argument("--text-column", help="the column of the texts to explain (default: the data's 'text', "
                                         "'sentence', 'content' or 'review' column, the first it has)")
    p.add_argument("--pair-column", help="a second text per document, for pair classifiers (premise and "
                                         "hypothesis, query and passage): each document is the pair")
    p.add_argument("--label-column", help="class ids or label names ('' for none; default: the data's 'labels' or "
                                          "'label' column, if it has one)")
    p.add_argument("--id-column", help="the data's own id of each document, written beside fastig's (the row's "
                                       "place) as documents.csv's and documents.jsonl's data_id and shown in the "
                                       "report ('' for none; default: the data's 'id' column, if it has one)")
    p.add_argument("--limit", type=_count(1), help="only the first N documents (a run may grow to a larger "
                                                   "--limit, or none, in the same --out: its documents done kept)")
    p.add_argument("--target", type=_dataset_target, default="predicted",
                   help="label (each document's label), predicted (default; a multi-label model's labels "
                        "above 1/2, a record each), all (every class, a record each), or a class index or label "
                        "name (several as 'A,B')")
    p.add_argument("--top-k", type=_count(0), default=20, help="top and bottom tokens kept per document (default 20)")
    p.add_argument("--shard-size", type=int,
                   help="documents per shard written (default: about 30 s of work per shard, so that a stopped run "
                        "loses little and the progress moves)")
    _add_processes_arg(p, "the documents")
    p.add_argument("--out", type=Path, required=True, help="output folder; the same command resumes a stopped run")

    p = commands.add_parser("aggregate",
                            help="rank words (or tokens) per attributed class over a `fastig dataset` run")
    p.add_argument("run", type=Path, help="the --out folder of `fastig dataset`")
    p.add_argument("--by", default="target", choices=("target", "label"),
                   help="group documents by their target (the class attributed; default), or by label and target")
    unit = p.add_mutually_exclusive_group()
    unit.add_argument("--tokens", action="store_true",
                      help="rank the tokens as the tokenizer split them (the seed notebook's unit), not words")
    unit.add_argument("--merge-subwords", action="store_true",
                      help="rank words, the tokenizer's words with punctuation its own (the default; as "
                           "`attribute` and `report` show them)")
    p.add_argument("--rank", default="sum", choices=("sum", "mean", "document_mean"),
                   help="what the printed lists rank by (default sum; the CSV files hold all)")
    p.add_argument("--min-count", type=int,
                   help="leave out tokens seen fewer times (default 3 for mean and document_mean, 1 for sum)")
    p.add_argument("--top", type=_count(0), default=10, help="tokens printed per group and end (default 10)")
    p.add_argument("--out", type=Path, help="folder for the CSV files (default: RUN/aggregate-by-<by>[-tokens]"
                                            "[-unfinished])")
    p.add_argument("--unfinished", action="store_true",
                   help="rank the documents done so far of a run not finished (going on, or stopped)")

    p = commands.add_parser("report", help="HTML pages of a `fastig dataset` folder or a result.json")
    p.add_argument("source", type=Path, help="a `fastig dataset` --out folder, or a result.json of `fastig attribute`")
    p.add_argument("--out", type=Path,
                   help="folder for index.html and one page per document (default: "
                        "RUN/report[-by-label][-tokens][-unfinished] for a run, beside a result.json as `attribute "
                        "--out` writes it: result[-by-label][-tokens].report)")
    p.add_argument("--tokens", action="store_true", help="highlight and rank tokens, not the tokenizer's words")
    p.add_argument("--by", default="target", choices=("target", "label"),
                   help="group the index's charts by target (default), or by label and target")
    p.add_argument("--unfinished", action="store_true",
                   help="report the documents done so far of a run not finished (going on, or stopped): "
                        "RUN/report-unfinished by default")

    # The benchmarks are loaded only when `fastig bench` runs: they parse their own arguments.
    commands.add_parser("bench", add_help=False,
                        help="time fastig against Captum in one run; write JSON, markdown and a plot "
                             "(see fastig bench --help)")
    return parser


def _texts(args) -> list:
    for i, text in enumerate(args.texts):
        # `fastig attribute --model M paper.txt` explained the word "paper.txt", without a sign
        if not any(character.isspace() for character in text) and Path(text).is_file():
            warnings.warn(f"argument {i + 1} {text!r} is explained as written, a text of one word, though it names a "
                          f"file: give --file {text} to explain what the file holds")
    texts = list(args.texts) + list(args.text or [])
    for path in args.file or []:
        try:
            raw = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
        except OSError as err:
            raise InputError(f"--file {str(path)!r}: {err.strerror}") from err
        if b"\0" in raw:
            raise InputError(f"--file {str(path)!r} holds NUL bytes: it is binary, not a text file")
        try:
            # utf-8-sig: a byte-order mark (Windows Notepad's, Excel's UTF-8) is no character of the text; kept,
            # a byte-level BPE made it a token of its own, an invisible word in the ranking.
            texts.append(raw.decode("utf-8-sig"))
        except UnicodeDecodeError as err:
            raise InputError(f"--file {str(path)!r} is not UTF-8 text (byte {err.start}); convert it, e.g. "
                             f"iconv -t utf-8") from err
    texts += [tuple(pair) for pair in args.pair or []]
    if not texts:
        raise InputError("give at least one document: TEXT, --text, --file or --pair")
    return texts


def _engine(args, state=None, share_steps: bool = False):
    """The engine of the command's model; in a launched process (state), on that process's GPU if there are
    GPUs, and with share_steps, sharing each document's steps with the other processes."""
    import torch

    from ..engine import Engine, resolve_device
    from ..models import load_classifier
    from ..processes import AllProcesses

    device = resolve_device(args.device, "--device ")
    if state is not None and device.type == "cuda":
        device = torch.device(f"cuda:{state.local_process_index}")
    model, tokenizer = load_classifier(args.model, args.tokenizer, device, args.trust_remote_code)
    return Engine(model, tokenizer, layer=args.layer, precision=args.precision, memory_budget=args.memory_budget,
                  attention=args.attention, processes=AllProcesses(state) if share_steps else None,
                  compile=args.compile)


def _resolved_target(value, config):
    """--target as the engine takes it: a label name as its class id, "A,B" (ids or names) as those classes'
    list; a name the model lacks is refused, naming its labels."""
    from ..models import named_classes

    if isinstance(value, str) and "," in value:
        classes = [int(part) if part.strip().lstrip("-").isdigit() else part.strip() for part in value.split(",")]
        return named_classes([classes], config, "--target ")[0]
    return named_classes(value, config, "--target ")


def _attribution_kwargs(args, config, n_docs: int) -> dict:
    target = _resolved_target(args.target, config)
    return dict(target=[target] * n_docs if isinstance(target, list) else target, n_steps=args.n_steps,
                tolerance=args.tolerance, max_steps=args.max_steps, accuracy=args.accuracy, method=args.method,
                baseline=args.baseline, output=args.output, max_length=args.max_length)


def cmd_attribute(args) -> int:
    from ..models import is_multi_label
    from ..processes import launched, process_state
    from .dataset import each_predicted_label, text_of_each_record

    texts = _texts(args)
    state = process_state() if launched() else None
    main_process = state is None or state.is_main_process
    if args.out and main_process:     # refused before any work, not after it
        _check_output_file(args.out)
    engine = _engine(args, state, share_steps=state is not None)
    kwargs = _attribution_kwargs(args, engine.model.config, len(texts))
    if kwargs["target"] is None and is_multi_label(engine.model.config):
        # each label the model predicts, a record each, as `fastig dataset` explains them (the top one alone
        # left out a comment's other labels: insult besides toxic)
        kwargs["target"] = each_predicted_label(engine, texts, args.max_length)
    # result.json and the report hold records and token scores only: the [L, H] tensors are not kept
    try:
        result = engine.attribute(texts, chunk_size=args.chunk_size, progress=_progress() if main_process else False,
                                  keep_attributions=False, **kwargs)
    except (Interrupted, Exception) as stop:    # the documents done are printed and go beside --out (whole or absent)
        # An interrupt's, an error's or a NonFiniteError's .result: the whole, finite texts done, ids their numbers
        done_before = getattr(stop, "result", None)
        if main_process and done_before is not None:
            print_result(done_before, args.top_k, tokens=args.tokens)
            done = f"{len({record.id for record in done_before.documents})} of {len(texts)} documents done"
            stop.kept = (f"the {done} are printed above and in {_keep_partial(args, done_before, done, stop)} (fastig "
                         "report reads it)" if args.out else f"the {done} are printed above (`fastig dataset` keeps "
                         "each finished one and resumes)")
            if not isinstance(stop, (Interrupted, FastIGError, OSError)):    # those are said in one line
                stop.add_note(f"fastig attribute: {stop.kept}")
        raise
    if not main_process:
        return 0
    # Several targets (all, A,B, a multi-label model's labels): each text's records follow each other; a record's
    # id is its text's number
    for record, text in zip(result.documents, text_of_each_record(kwargs["target"], len(result), len(texts))):
        record.id = text
    print_result(result, args.top_k, tokens=args.tokens)
    print(run_line(result))
    if args.out:
        _write_result(args, result)
    return 0


def _progress() -> bool | None:
    """A bar from the start on a terminal; in a log or a pipe (no terminal) once the call has run 10 s, as in
    Python: a call of a second left a line of bar updates before its results in every log."""
    return True if sys.stderr.isatty() else None


def _partial_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}.partial.json")


def _keep_partial(args, result, done: str, stop: BaseException) -> Path:
    """The documents a stopped attribute finished (`done`: "N of M documents done"), written to
    OUT.partial.json (marked "interrupted" with it, and "stopped_by" the interrupt or the error, which a file
    read later did not say), which `fastig report` reads; its path."""
    from .files import to_json, write_atomically

    stopped_by = "an interrupt (Ctrl-C or SIGTERM)" if isinstance(stop, Interrupted) else \
        f"{type(stop).__name__}: {stop}"
    path = _partial_path(args.out)
    write_atomically(path, to_json({**result.to_dict(args.top_k), "interrupted": done, "stopped_by": stopped_by,
                                    "source": _source_facts(args)}))
    return path


def _source_facts(args) -> dict:
    """Where the documents came from and how they were attributed, for result.json and the report's pages."""
    inputs = ["text"] * len(args.texts) + ["--text"] * len(args.text or []) + \
        [str(path) for path in args.file or []] + ["--pair"] * len(args.pair or [])
    facts = {"model": args.model, "tokenizer": args.tokenizer or args.model, "inputs": ", ".join(inputs),
             "layer": args.layer or "embeddings", "target": "predicted" if args.target is None else args.target}
    for name in ("n_steps", "method", "accuracy", "tolerance", "max_steps", "baseline", "output", "precision",
                 "attention", "compile", "max_length", "memory_budget"):
        facts[name] = getattr(args, name)
    return facts


def _check_output_file(path: Path) -> None:
    from .files import output_folder

    if path.is_dir():
        raise InputError(f"--out {str(path)!r} is a folder; give a file name such as result.json")
    output_folder(path.parent, "--out's folder")


def _write_result(args, result) -> None:
    """result.json and its report. Nothing computed is lost to a write that fails: the result goes to a
    temporary file instead, and the error says where."""
    import tempfile

    from .files import to_json, write_atomically
    from .report import Source, write_report

    source = Source({**_source_facts(args), "output": result.output})     # --output left out: what it meant
    text = to_json({**result.to_dict(args.top_k), "source": source.facts})
    try:
        write_atomically(args.out, text)
    except OSError as err:
        kept = Path(tempfile.gettempdir()) / f"fastig-result-{os.getpid()}.json"
        try:
            kept.write_text(text, encoding="utf-8")
        except OSError:
            kept = None
        where = f"the result is kept in {kept}" if kept else "and no temporary file could be written either"
        raise OutputError(f"--out {str(args.out)!r}: cannot write it ({err.strerror or err}); {where}") from err
    _partial_path(args.out).unlink(missing_ok=True)     # an earlier stopped run's documents: not beside this one
    try:
        index = write_report(result.documents, result.labels, _report_folder(args.out, "target", False),
                             f"fastig: {args.out.name}", source=source)
    except OSError as err:
        raise OutputError(f"wrote {args.out}, but not its HTML report ({err.strerror or err}); "
                          f"`fastig report {args.out} --out FOLDER` writes it elsewhere") from err
    print(f"wrote {args.out} and the HTML report {index}")


def cmd_check(args) -> int:
    from ..reference import MAX_DELTA_DIFF, MAX_REL_L2, MIN_LOW_PRECISION_PEARSON, captum_attribute, compare
    from .dataset import text_of_each_record

    if args.n_steps == "auto":
        raise InputError("--n-steps auto: check compares with Captum, which needs a fixed number of steps")
    if args.baseline == "zeros":    # refused before any work, as Captum would refuse it after fastig's
        raise BaselineError("--baseline zeros: Captum's LayerIntegratedGradients takes baselines as ids; check "
                            "with pad, unk or mask")
    texts = _texts(args)
    engine = _engine(args)
    # Captum's computation: its rule and steps (its defaults where not given)
    kwargs = {**_attribution_kwargs(args, engine.model.config, len(texts)),
              "n_steps": args.n_steps or CAPTUM_DEFAULT_STEPS,
              "method": args.method or "gausslegendre"}
    ours = engine.attribute(texts, chunk_size=args.chunk_size, progress=_progress(), **kwargs)
    rule_kwargs = {k: v for k, v in kwargs.items() if k not in ("tolerance", "max_steps", "accuracy")}
    theirs = captum_attribute(engine, texts, internal_batch_size=args.internal_batch_size, progress=_progress(),
                              **rule_kwargs)
    c = compare(ours, theirs)
    tokens = sum({text: len(record.tokens) for record, text in
                  zip(ours.documents, text_of_each_record(kwargs["target"], len(ours), len(texts)))}.values())
    print(f"fastig against Captum: {counted(len(ours), 'explanation')} of {counted(len(texts), 'document')} "
          f"({tokens:,} tokens), {kwargs['method']} {kwargs['n_steps']} steps, fastig in {ours.stats.precision}")
    print(f"rel L2 {c.rel_l2:.2e} (<= {MAX_REL_L2:g})  max abs {c.max_abs:.2e}  "
          f"Pearson {c.pearson:.6f} (>= {MIN_LOW_PRECISION_PEARSON:g} in bf16/fp16)  "
          f"Spearman {c.spearman:.6f}  top-10 overlap {c.top_k_overlap:.2f}")
    print(f"delta fastig {c.delta_fastig}  captum {c.delta_captum}  max diff {c.delta_diff:.2e} (<= {MAX_DELTA_DIFF:g})")
    if c.other_baseline_output:
        print(f"  the attributions' sums agree ({c.sum_diff:.2e}): Captum's F(b) is a forward of the baseline ids, "
              "fastig's the path's start, as this model reads the ids past the layer")
    print(f"time fastig {ours.stats.seconds.total:.2f} s  captum {theirs.seconds:.2f} s (one run each: "
          f"{theirs.seconds / max(ours.stats.seconds.total, 1e-9):.2g}x)")
    precision = ours.stats.precision
    passed = c.passed(precision)
    print(f"PASS ({precision} contract)" if passed else f"FAIL: fastig ({precision}) and Captum disagree beyond the contract")
    return 0 if passed else 1


def cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(args.out, args.n_steps, args.documents, args.top_k)


def _model_fingerprint(args, engine) -> str:
    """The content of the model and tokenizer folders (SHA-256 of their files), or for hub names the name and
    the revision the hub resolved."""
    from .files import fingerprint

    parts = []
    for name in dict.fromkeys((args.model, args.tokenizer or args.model)):
        path = Path(name)
        parts.append(fingerprint(path) if path.exists() else
                     f"hub:{name}@{getattr(engine.model.config, '_commit_hash', None)}")
    return "+".join(parts)


def cmd_dataset(args) -> int:
    import torch
    import transformers

    from .. import __version__
    from ..models import check_target, is_multi_label, label_names, resolve_output
    from ..processes import launched, process_state
    from .dataset import LABEL_COLUMNS, class_ids, read_rows, run_dataset
    from .files import output_folder

    data = read_rows(args.data, args.split, args.text_column, args.label_column, args.limit,
                     need_labels=args.target == "label", pair_column=args.pair_column, id_column=args.id_column)
    state = process_state() if launched() else None
    engine = _engine(args, state)
    config = engine.model.config
    if args.target not in ("label", "predicted", "all"):    # refused before any work, as the engine would refuse it
        args.target = _resolved_target(args.target, config)
        for target in args.target if isinstance(args.target, list) else [args.target]:
            check_target(target, 1, config.num_labels)
    rows = class_ids(data.rows, config, need_labels=args.target == "label")
    if state is None or state.is_main_process:
        output_folder(args.out, "--out")
    default_path = uses_default_path(args.n_steps, args.method, args.precision)
    settings = {"model": args.model, "tokenizer": args.tokenizer or args.model, "layer": args.layer or "embeddings",
                "data": args.data, "split": args.split, "text_column": data.text_column,
                "pair_column": args.pair_column,
                # the column found, else as given (an absent "labels" reads as runs before this version wrote it)
                "label_column": data.label_column or (LABEL_COLUMNS[0] if args.label_column is None
                                                      else args.label_column),
                "limit": args.limit, "target": args.target,
                "n_steps": args.n_steps, "tolerance": args.tolerance if args.n_steps == "auto" else None,
                "accuracy": args.accuracy if default_path else None,
                "max_steps": args.max_steps if args.n_steps == "auto" or default_path else None,
                "method": args.method, "baseline": args.baseline,
                "output": resolve_output(args.output, config),     # as runs before the default was None
                "max_length": args.max_length, "precision": engine.precision.name, "attention": args.attention,
                "top_k": args.top_k, "labels": label_names(config),
                # A multi-label model's prediction was its top label alone in earlier runs: never mixed with these.
                **({"predicted": "each label above 1/2"} if args.target == "predicted" and is_multi_label(config)
                   else {})}
    versions = {"fastig": __version__, "torch": torch.__version__, "transformers": transformers.__version__}
    fingerprints = {"data": data.fingerprint, "model": _model_fingerprint(args, engine)}
    summary = run_dataset(engine, rows, args.out, settings, fingerprints, versions, args.target, args.top_k,
                          args.shard_size,
                          state=state, n_steps=args.n_steps, tolerance=args.tolerance, max_steps=args.max_steps,
                          accuracy=args.accuracy, method=args.method, baseline=args.baseline, output=args.output,
                          max_length=args.max_length)
    if state is not None and not state.is_main_process:
        return 0
    notes = f", {summary['cut']} cut to the model's length (documents.csv's truncated_tokens)" \
        if summary["cut"] else ""
    if summary["short"]:
        goal = f"--accuracy {args.accuracy:g}" if default_path else f"--tolerance {args.tolerance:g}"
        notes += (f", {summary['short']} short of {goal} (stopped at --max-steps {args.max_steps}: "
                  + ("documents.csv's estimated_error)" if default_path else "documents.jsonl's tolerance_met)"))
    by = ""     # a run already done: no rate to tell ("0 token-steps/s" read as a fault)
    if summary["attributed_now"]:
        rate = summary["token_steps"] / summary["seconds"]
        # The main process's rate: each process counts its own work (its share: about 1/N of the documents)
        by = f" by {summary['processes']} processes ({rate:.0f} token-steps/s in the main one)" \
            if summary["processes"] > 1 else f" ({rate:.0f} token-steps/s)"
    print(f"{counted(summary['documents'], 'document')} in {args.out}: {summary['attributed_now']} attributed now"
          f"{by}, {summary['resumed_with']} from before, {summary['skipped']} skipped (skipped.csv){notes}; "
          "documents.jsonl, documents.csv")
    return 0


def cmd_aggregate(args) -> int:
    import csv

    from ..display import label_name
    from ..summarize import ends
    from .aggregate import group_file_name, group_key, ranked, read_run, tally

    run = read_run(args.run, args.unfinished)
    records, labels = run.records, run.manifest["settings"].get("labels", {})
    if not run.finished:
        print(run.so_far)
    out = args.out or args.run / (f"aggregate-by-{args.by}{'-tokens' if args.tokens else ''}"
                                  f"{'' if run.finished else '-unfinished'}")
    out.mkdir(parents=True, exist_ok=True)
    counts = tally(records, args.by, merge_subwords=not args.tokens)
    rankings = counts.rankings
    columns = ("token", "target", "sum", "mean", "count", "documents", "document_mean")
    for group in sorted(rankings, key=str):
        rows = rankings[group]
        with open(out / group_file_name(group, labels), "w", newline="", encoding="utf-8") as f:
            # Lists, not generators: a generator per row reads `r` when written, the last row's (every ranking
            # file written from 2026-12-01 to 2026-12-07, fastig 0.2.0, repeated its last row).
            csv.writer(f).writerows([columns, *([getattr(r, c) for c in columns] for r in rows)])
        documents = sum(1 for r in records if group_key(r, args.by) == group)
        name = (f"target {label_name(group, labels)}" if args.by == "target" else
                f"label {label_name(group[0], labels)}, target {label_name(group[1], labels)}")
        order = ranked(rows, args.rank, args.min_count)
        unit = "tokens" if args.tokens else "words"
        print(f"{name}: {counted(documents, 'document')}, {len(rows)} distinct {unit} "
              f"({len(order)} ranked by {args.rank})")
        print(f"  {'highest ' + args.rank:<30}{'lowest ' + args.rank:<30}")
        highest, lowest = ends(order, lambda r: getattr(r, args.rank), args.top)
        print_columns([(r.token, getattr(r, args.rank)) for r in highest],
                      [(r.token, getattr(r, args.rank)) for r in lowest], width=18)
    with open(out / "per_document.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("id", "target", "token", "sum", "count", "data_id"),
                                 *counts.per_document])
    print(f"wrote {len(rankings)} group files and per_document.csv to {out}")
    return 0


def _report_folder(source: Path, by: str, tokens: bool, finished: bool = True) -> Path:
    """Where a report goes without --out: into a run's folder, as aggregate writes, or beside a result.json where
    `attribute --out` put its report; each choice of grouping and unit, and a run's part so far, in a folder of
    its own."""
    options = ("-by-label" if by == "label" else "") + ("-tokens" if tokens else "") + ("" if finished else
                                                                                         "-unfinished")
    if source.is_dir():
        return source / f"report{options}"
    return source.with_name(f"{source.stem}{options}.report")


def cmd_report(args) -> int:
    from .report import load, write_report

    loaded = load(args.source, args.unfinished)
    if loaded.so_far:
        print(loaded.so_far)
    out = args.out or _report_folder(args.source, args.by, args.tokens, finished=not loaded.so_far)
    index = write_report(loaded.records, loaded.labels, out, loaded.title, args.tokens, args.by, loaded.source)
    print(f"wrote {len(loaded.records)} document pages and {index}")
    return 0


def cmd_bench(args) -> int:
    from ..benchmarks import suite

    suite.main(suite.build_parser(_Parser(prog="fastig bench", description=suite.__doc__.splitlines()[0]))
               .parse_args(args.bench_arguments))
    return 0


COMMANDS = {"attribute": cmd_attribute, "check": cmd_check, "demo": cmd_demo, "dataset": cmd_dataset,
            "aggregate": cmd_aggregate, "report": cmd_report, "bench": cmd_bench}


def _without_processes(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--processes":
            skip = True
        elif not arg.startswith("--processes="):
            out.append(arg)
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv:        # the commands and where to start, not "the following arguments are required: command"
        parser.print_help(sys.stderr)
        return 2
    args, unknown = parser.parse_known_args(argv)
    if args.command == "bench":    # its arguments are the benchmarks' own
        args.bench_arguments = unknown
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    resume = "; run the same command again to continue where it stopped" if args.command == "dataset" else ""
    after_stop = {"dataset": resume, "attribute": "; its documents are not kept (`fastig dataset` keeps each "
                                                  "finished one and resumes)"}.get(args.command, "")
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning(args)
        try:
            with sigterm_as_interrupt():
                processes = getattr(args, "processes", 1)
                if processes < 1:
                    raise InputError(f"--processes {processes}: give 1 or more")
                if processes > 1:
                    from ..processes import launched
                    from .launcher import relaunch

                    if launched():
                        raise InputError("--processes inside accelerate launch: give one or the other")
                    if any(str(path) == "-" for path in getattr(args, "file", None) or []):
                        raise InputError("--file - (standard input) with --processes: every process reads the "
                                         "documents; save it to a file and give its path")
                    return relaunch(_without_processes(argv), processes)
                if args.command != "bench":     # the benchmarks give every provider the same allocator setting
                    from ..scheduler import retain_freed_cpu_memory
                    retain_freed_cpu_memory()
                return COMMANDS[args.command](args)
        except FastIGError as err:
            return _error(args.command, f"{_named_documents(str(err), args)}{_kept(err)}")
        except OSError as err:      # a file or folder of the user's: unreadable, unwritable, a full disk
            where = f"{err.filename}: " if err.filename else ""
            return _error(args.command, f"{where}{err.strerror or err}{_kept(err) or resume}")
        except KeyboardInterrupt as stop:
            if os.environ.get("RANK", "0") == "0":     # one line for the processes of --processes N, not one each
                kept = getattr(stop, "kept", None)
                print(f"fastig {args.command}: interrupted{f'; {kept}' if kept else after_stop}", file=sys.stderr)
            return 130


def _kept(error) -> str:
    """What a command kept of the work an error stopped ("; the 3 of 5 documents done are ..."), or ""."""
    kept = getattr(error, "kept", None)
    return f"; {kept}" if kept else ""


@contextmanager
def sigterm_as_interrupt():
    """Inside, a SIGTERM (a time limit's, `timeout`'s, a job scheduler's) stops the command as Ctrl-C does: a
    data-set run releases its lock and says how to resume, a benchmark run writes what it measured. One
    SIGTERM: a second one, while that is done, is ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt("SIGTERM")
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _error(command: str, message: str) -> int:
    message = " ".join(message.split())   # one line, whatever the wrapped library said
    print(f"fastig {command}: error: {message}", file=sys.stderr)
    return 2


def _one_line_warning(args):
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"fastig {args.command}: warning: {' '.join(_named_documents(str(message), args).split())}",
              file=sys.stderr)
    return show


def _sources(args) -> list[str]:
    """Where each document of `attribute` or `check` came from, in their order (_texts'): "argument 1",
    "--text 2", "--file paper.txt", "--pair 1"."""
    return ([f"argument {i + 1}" for i in range(len(args.texts))]
            + [f"--text {i + 1}" for i in range(len(args.text or []))] + [f"--file {path}" for path in args.file or []]
            + [f"--pair {i + 1}" for i in range(len(args.pair or []))])


def _named_documents(message: str, args) -> str:
    """The core names a text by its place in the list it was given (texts[2]), which no file or flag of the
    command is called: here it is the document as the command prints it, and where it came from
    ("document 2 (--file paper.txt)")."""
    if not hasattr(args, "texts"):
        return message
    sources = _sources(args)

    def named(match) -> str:
        i = int(match[1])
        return f"document {i}" + (f" ({sources[i]})" if i < len(sources) else "") + (": " if match[2] else "")
    return re.sub(r"texts\[(\d+)\](=?)", named, message)

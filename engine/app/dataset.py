"""Whole-data-set runs: every document of a data set attributed into resumable shards.

out/
  manifest.json     the settings and the fingerprints of data and model (compared on resume), versions
  .lock             held by the run while it runs (a second run on the same folder is refused)
  shards/R-<sha>.jsonl  records written by process R, named by the SHA-256 of their content: temp file,
                    fsync, rename
  shards/corrupt/   shards whose content no longer matches their name, moved aside (never deleted)
  index.json        which ids each shard holds, written with the merged files
  documents.jsonl   every record once, sorted by id, documents.csv one line per document, and
  skipped.csv       the documents left out with the reason: written once every document is done

A run stopped at any point (Ctrl-C, kill -9, a full disk) continues where it stopped when the
same command runs again; Ctrl-C (or a SIGTERM) amid a shard first writes the documents of it that were
done as a shard of their own. A shard is whole or absent, and it is read only if its content matches
its name: the documents done are the ids in sound shards, a missing, truncated or edited shard's
documents are redone, and a document in two shards is merged once. Data and model are compared
by content, not by path: a changed file or model at the same path is refused, the same one at
another path is accepted. Records do not depend on which documents shared a shard beyond fp32
rounding (fastig packs documents of similar length into one model call).
"""

import csv
import hashlib
import io
import json
import math
import sys
import time
import warnings
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..engine import TimeLeft
from ..errors import DataError, Interrupted, NonFiniteError
from ..inputs import TruncationWarning, max_text_tokens
from ..models import hub_quiet, is_multi_label, label_ids, predicted_labels
from ..result import DocumentResult
from .files import RunLock, fingerprint, to_json, write_atomically

DATA_READERS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
TARGET_MODES = ("label", "predicted")


@dataclass(frozen=True)
class Row:
    """One document of the data set: its position in the split, its text (a pair of texts with --pair-column),
    its label (or None) and the data's own id of it (--id-column; or None)."""
    id: int
    text: object
    label: object
    data_id: int | str | None = None


def _columns_of(data: str, split: str, text_columns: list[str]):
    """The data set as {column: list of values}, from a file, a save_to_disk folder or the hub, and its
    fingerprint (the SHA-256 of the file or folder, or the hub data set's own fingerprint)."""
    path = Path(data)
    if path.is_file():
        import pandas as pd

        kind = DATA_READERS.get(path.suffix.lower())
        if kind is None:
            raise DataError(f"--data {data!r}: unknown file type {path.suffix!r}; "
                            f"give a {', '.join(DATA_READERS)} file, a save_to_disk folder or a hub name")
        try:
            # The text column as text: a column of numbers is text that looks numeric, not missing text.
            as_text = dict.fromkeys(text_columns, str)
            frame = {"csv": lambda: pd.read_csv(path, keep_default_na=False, dtype=as_text),
                     # A TSV's fields hold no tab or line break, so its quotes are text (GLUE's SST-2): read as
                     # CSV quoting, `" the good " movie` lost its quotes, and an unclosed one failed the read.
                     "tsv": lambda: pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False,
                                                dtype=as_text),
                     # JSON's own types: pandas' inference made a text "007" the int 7 (skipped, not text);
                     # utf-8-sig: a byte-order mark failed the read.
                     "json": lambda: pd.read_json(path, lines=path.suffix.lower() == ".jsonl", dtype=False,
                                                  encoding="utf-8-sig"),
                     "parquet": lambda: pd.read_parquet(path)}[kind]()
        except (OSError, ValueError, ImportError, UnicodeDecodeError) as err:
            raise DataError(f"--data {data!r}: cannot read it as {kind}: {err}") from err
        return {column: frame[column].tolist() for column in frame.columns}, fingerprint(path)
    if not path.is_dir() and (path.suffix.lower() in DATA_READERS or data.startswith(("/", ".", "~"))):
        raise DataError(f"--data {data!r}: no such file or folder")
    import datasets

    if path.is_dir():
        try:
            loaded = datasets.load_from_disk(str(path))
        except (OSError, ValueError, FileNotFoundError) as err:
            raise DataError(f"--data {data!r}: not a folder written by save_to_disk: {err}") from err
    else:
        try:
            with hub_quiet(bars=True):    # a download's bars stay; the hub client's retry warnings go
                loaded = datasets.load_dataset(data)
        except Exception as err:      # the hub client raises many kinds; all mean "cannot get it"
            raise DataError(f"--data {data!r}: cannot load it from the Hugging Face hub (is it reachable?): "
                            f"{type(err).__name__}: {err}") from err
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"--split {split!r} is not a split of {data!r}; splits: {', '.join(loaded)}")
        loaded = loaded[split]
    return loaded.to_dict(), fingerprint(path) if path.is_dir() else loaded._fingerprint


# The text column when none is named: imdb, ag_news, yelp and tweet_eval call it "text", GLUE's SST-2 and CoLA
# "sentence", amazon_polarity "content"; a default of "text" alone refused SST-2 until named.
TEXT_COLUMNS = ("text", "sentence", "content", "review")
# The data's own ids, when none is named: go_emotions', SQuAD's and most exports' name for it.
ID_COLUMN = "id"
# The label column when none is named: multi-label sets (go_emotions) call it "labels", most others (imdb,
# sst2, ag_news, tweet_eval) "label"; a default of "labels" alone left those sets' runs without labels.
LABEL_COLUMNS = ("labels", "label")


@dataclass(frozen=True)
class DataRead:
    """The documents read, the data's fingerprint and the columns they came from (label_column, id_column None:
    none)."""
    rows: list[Row]
    fingerprint: str
    text_column: str
    label_column: str | None
    id_column: str | None = None


def read_rows(data: str, split: str = "test", text_column: str | None = None, label_column: str | None = None,
              limit: int | None = None, need_labels: bool = False, pair_column: str | None = None,
              id_column: str | None = None) -> DataRead:
    """The first `limit` documents (all by default) of the data set, checked before any work starts; with
    `pair_column` each document is the pair (text, its pair's text). text_column None: the first of
    TEXT_COLUMNS the data has (none is refused); label_column None: the first of LABEL_COLUMNS the data has
    (or none), id_column None: ID_COLUMN if the data has it; "": none. A column named that the data lacks is
    refused. Ids are kept as the file writes them (a CSV's "007" stays text)."""
    candidates = TEXT_COLUMNS if text_column is None else (text_column,)
    columns, data_fingerprint = _columns_of(data, split, [*candidates, *([pair_column] if pair_column else []),
                                                          id_column or ID_COLUMN])
    if text_column is None:
        text_column = next((column for column in TEXT_COLUMNS if column in columns), None)
        if text_column is None:
            raise DataError(f"{data!r} has no {' or '.join(map(repr, TEXT_COLUMNS))} column: name the column of "
                            f"the texts with --text-column; columns: {', '.join(columns)}")
    text_columns = {"--text-column": text_column, "--pair-column": pair_column}
    for option, column in text_columns.items():
        if column is not None and column not in columns:
            raise DataError(f"{option} {column!r} is not a column of {data!r}; columns: {', '.join(columns)}")
    if label_column is None:
        label_column = next((column for column in LABEL_COLUMNS if column in columns), None)
        if label_column is None and need_labels:
            raise DataError(f"{data!r} has no {' or '.join(map(repr, LABEL_COLUMNS))} column (--target label needs "
                            f"labels): name it with --label-column; columns: {', '.join(columns)}")
    elif label_column == "":
        label_column = None
    elif label_column not in columns:
        raise DataError(f"--label-column {label_column!r} is not a column of {data!r}; columns: {', '.join(columns)}")
    if id_column is None:
        id_column = ID_COLUMN if ID_COLUMN in columns else None
    elif id_column == "":
        id_column = None
    elif id_column not in columns:
        raise DataError(f"--id-column {id_column!r} is not a column of {data!r}; columns: {', '.join(columns)}")
    texts = columns[text_column][:limit]
    if pair_column is not None:
        texts = list(zip(texts, columns[pair_column][:limit]))
    labels = columns[label_column][:limit] if label_column is not None else [None] * len(texts)
    ids = map(_data_id, columns[id_column][:limit]) if id_column is not None else [None] * len(texts)
    if not texts:
        raise DataError(f"--data {data!r} holds no document")
    return DataRead([Row(i, text, label, data_id) for i, (text, label, data_id) in enumerate(zip(texts, labels, ids))],
                    data_fingerprint, text_column, label_column, id_column)


def _data_id(value) -> int | str | None:
    """An id as JSON keeps it: an int or text as it is, anything else (a parquet float, a date) as its text."""
    if value is None or isinstance(value, str) or isinstance(value, int) and not isinstance(value, bool):
        return value
    return str(value)


def class_ids(rows: list[Row], config, need_labels: bool = False) -> list[Row]:
    """Labels as class ids: ints in [0, config.num_labels), or the model's label names; a multi-label data set's
    lists of them (in a CSV written as JSON, '[0, 2]') as sorted lists (then every document's, a single class
    as a list of one). Anything else is refused (a missing label too, when `need_labels`)."""
    names, num_labels = label_ids(config), config.num_labels
    checked = []
    for row in rows:
        label = row.label
        if label is None:
            if need_labels:
                raise DataError(f"document {row.id} has no label (--target label needs one for every document)")
            checked.append(row)
            continue
        if getattr(label, "ndim", 0) == 1:      # a parquet file's list column reads as numpy arrays
            label = label.tolist()
        elif isinstance(label, str) and label.strip().startswith("["):     # a CSV's list, written as JSON
            try:
                label = json.loads(label)
            except ValueError:
                pass        # refused below as it is
        if isinstance(label, (list, tuple)):
            label = sorted({_class_id(row, value, names, num_labels) for value in label})
        else:
            label = _class_id(row, label, names, num_labels)
        checked.append(replace(row, label=label))
    if any(isinstance(row.label, list) for row in checked):
        checked = [replace(row, label=[row.label]) if isinstance(row.label, int) else row for row in checked]
    return checked


def _class_id(row: Row, label, names: dict, num_labels: int) -> int:
    if isinstance(label, str) and label in names:
        label = names[label]
    elif isinstance(label, float) and label.is_integer():
        label = int(label)
    elif isinstance(label, str) and label.strip().lstrip("-").isdigit():
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < num_labels:
        raise DataError(f"document {row.id}: label {row.label!r} is not a class id of this model "
                        f"(0..{num_labels - 1}" + (f" or one of {', '.join(names)}" if names else "")
                        + "; a multi-label data set: a list of them)")
    return label


def _skip_reason(text, tokenizer) -> tuple[str | None, int]:
    """Why a document is left out (None: it is not), and its number of text tokens."""
    if isinstance(text, tuple):     # a pair: both texts must be there
        (first, first_length), (second, second_length) = (_skip_reason(part, tokenizer) for part in text)
        reason = first if first else f"{second} (--pair-column)" if second else None
        return reason, first_length + second_length
    if text is None or isinstance(text, float) and math.isnan(text):
        return "no text", 0
    if not isinstance(text, str):
        return f"text of type {type(text).__name__}, not a string", 0
    if not text.strip():
        return "empty text", 0
    length = len(tokenizer.encode(text, add_special_tokens=False))
    return (None if length else "no token once tokenized"), length


# Compared on resume by content (the fingerprints), not by these path strings, kept for the reader.
PATH_SETTINGS = ("model", "tokenizer", "data")
# What a finished run's merge writes from its shards: gone when a run grows, so that it reads as unfinished.
MERGED_OUTPUTS = ("documents.jsonl", "documents.csv", "skipped.csv", "index.json")


def _grows(then, now) -> bool:
    """Whether --limit `now` takes more of the data's first rows than `then` (None: all of them)."""
    return then is not None and (now is None or now > then)


def check_manifest(out: Path, settings: dict, fingerprints: dict, versions: dict, write: bool = True,
                   documents: int | None = None) -> None:
    """Start a run in `out` (the manifest written if `write`, with the number of `documents` of its data, which
    its settings and data fix: what an unfinished run is a part of), or resume one with the same settings and
    the same data and model by content; a difference is refused by name, but for a --limit that grows: the run
    then goes on to the new limit (a trial on the first 100 documents, then all), its documents done kept."""
    path = out / "manifest.json"
    if path.exists():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
            before_settings, before_fingerprints = before["settings"], before.get("fingerprints", {})
            before_settings.items()
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise DataError(f"--out {str(out)!r}: its manifest.json cannot be read ({err}); it is not a run this "
                            "fastig can resume: use another --out") from err
        grows = _grows(before_settings.get("limit"), settings.get("limit"))
        changed = [f"{key} {before_settings.get(key)!r} (then) vs {settings.get(key)!r} (now)"
                   + (" (--limit may grow between runs, not shrink)" if key == "limit" else "")
                   for key in sorted(set(before_settings) | set(settings))
                   if key not in PATH_SETTINGS and before_settings.get(key) != settings.get(key)
                   and not (key == "limit" and grows)]
        changed += [f"the {key}'s content changed ({str(before_fingerprints.get(key))[:12]}... then vs "
                    f"{str(fingerprints[key])[:12]}... now)"
                    for key in sorted(fingerprints) if before_fingerprints.get(key) != fingerprints[key]]
        if changed:
            raise DataError(f"--out {str(out)!r} holds a run with other settings: {'; '.join(changed)}; "
                            "run with the same settings, data and model to resume it, or use another --out")
        # Other versions compute the same to rounding, unless a fix changed a result: said, not refused.
        before_versions = before.get("versions") or {}
        upgraded = [f"{name} {before_versions[name]} (then) vs {versions.get(name)} (now)"
                    for name in sorted(before_versions) if before_versions[name] != versions.get(name)]
        if upgraded and write:
            print(f"fastig dataset: resuming a run begun with other versions: {'; '.join(upgraded)}; its documents "
                  "come from both (each shard's records from one)", file=sys.stderr)
        if grows and write:
            _grow(out, before, settings.get("limit"), documents)
        return
    if write:
        write_atomically(path, to_json({"settings": settings, "fingerprints": fingerprints, "versions": versions,
                                        "documents": documents}, indent=1) + "\n")


def _grow(out: Path, manifest: dict, limit: int | None, documents: int) -> None:
    """The run in `out` goes on to the larger `limit` of `documents`: its manifest says so, and its merged
    outputs go (made again from the shards once the grown run is done), so that it reads as unfinished."""
    for name in MERGED_OUTPUTS:
        (out / name).unlink(missing_ok=True)
    write_atomically(out / "manifest.json", to_json({**manifest, "settings": {**manifest["settings"], "limit": limit},
                                                     "documents": documents}, indent=1) + "\n")
    # Reports and rankings made of the smaller run are the user's files: named, not deleted.
    made = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name.startswith(("report", "aggregate")))
    print(f"fastig dataset: the run grows from --limit {manifest['settings']['limit']} to {limit or 'all'} "
          f"({documents} documents); the documents done are kept"
          + (f"; {', '.join(made)} {'holds' if len(made) == 1 else 'hold'} the smaller run's: make "
             f"{'it' if len(made) == 1 else 'them'} again at its end" if made else ""), file=sys.stderr)


def shard_name(content: str, rank: int = 0) -> str:
    """R-<the first 16 hex digits of the content's SHA-256>.jsonl: R, the process that wrote it."""
    return f"{rank}-{hashlib.sha256(content.encode('utf-8')).hexdigest()[:16]}.jsonl"


def _entry(values: dict):
    """A shard line: a DocumentResult, or (id, reason) for a document left out while running."""
    if "skipped" in values:
        return values["id"], values["skipped"]
    return DocumentResult.from_json(values)


def _entry_id(entry):
    return entry[0] if isinstance(entry, tuple) else entry.id


def sound_shards(out: Path, move_corrupt: bool) -> dict[str, list]:
    """{shard name: its entries} of the shards whose content matches their name; the others are moved to
    shards/corrupt/ (if `move_corrupt`) and named on stderr: their documents are redone."""
    found = {}
    for path in sorted((out / "shards").glob("*.jsonl")):
        try:
            content = path.read_text(encoding="utf-8")
            rank = path.name.split("-", 1)[0]
            if not rank.isdigit() or shard_name(content, int(rank)) != path.name:
                raise ValueError("its content does not match its name: truncated or edited")
            found[path.name] = [_entry(json.loads(line)) for line in content.splitlines()]
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
            if move_corrupt:
                (out / "shards" / "corrupt").mkdir(exist_ok=True)
                path.replace(out / "shards" / "corrupt" / path.name)
                print(f"fastig dataset: shard {path.name} is unreadable ({err}); moved to shards/corrupt/, "
                      "its documents are redone", file=sys.stderr)
    return found


READING_BAR_DELAY_S = 2.0    # reading that takes longer shows a bar (0.5 ms a 7 KB record, 2-core EPYC)


def read_records(paths: list[Path]) -> list[DocumentResult]:
    from tqdm.auto import tqdm

    lines = [line for path in paths for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [DocumentResult.from_json(json.loads(line)) for line in tqdm(
        lines, unit="doc", desc="reading documents", leave=False, delay=READING_BAR_DELAY_S, mininterval=1.0)]


@dataclass
class Plan:
    """What one process of a run does: its share of the documents still to attribute (longest first),
    how many were done before, and what is skipped before any work, and why."""
    pending: list
    done: int
    skipped: list
    tokens: dict        # the text tokens of each pending document (by id), as far as the model keeps them
    pending_in_all: int     # the documents still to attribute, every process's share


def plan_run(engine, rows: list[Row], out: Path, settings: dict, fingerprints: dict, versions: dict, rank: int,
             processes: int, wait, max_length: int | None = None) -> Plan:
    """Start or resume the run in `out` (the manifest checked) and deal the documents that no sound shard
    holds yet to the processes. max_length: the text tokens a document keeps (None: the model's limit)."""
    if rank == 0:
        (out / "shards").mkdir(parents=True, exist_ok=True)
    wait()
    check_manifest(out, settings, fingerprints, versions, write=rank == 0, documents=len(rows))
    reasons, lengths = {}, {}
    for row in rows:
        reasons[row.id], lengths[row.id] = _skip_reason(row.text, engine.tokenizer)
    skipped = [(i, reason) for i, reason in reasons.items() if reason is not None]
    done = {_entry_id(entry) for entries in sound_shards(out, move_corrupt=rank == 0).values() for entry in entries}
    wait()      # every process has seen the same shards before any writes a new one
    pending = [row for row in rows if row.id not in done and reasons[row.id] is None]
    # Longest first, in shards of similar lengths: the engine packs them into shared calls. Dealt
    # round-robin, each process gets a similar share of tokens.
    pending.sort(key=lambda row: (-lengths[row.id], row.id))
    mine = pending[rank::processes]
    kept = max_length or max_text_tokens(engine.model.config, engine.tokenizer) or math.inf
    return Plan(mine, len(done), skipped, {row.id: min(lengths[row.id], kept) for row in mine}, len(pending))


# Without --shard-size each shard is sized to take about SHARD_SECONDS by the time per document so
# far: a kill -9 loses at most about that much work, and the progress bar moves at least as often.
SHARD_SECONDS = 30.0
SHARD_DOCUMENTS = (1, 256)     # the fewest and most documents per shard then
FIRST_SHARD = 1        # then sized by the time it took


class ShardSizes:
    """Documents per shard: fixed, or sized from the time per document so far."""

    def __init__(self, fixed: int | None):
        self.fixed, self.documents, self.seconds = fixed, 0, 0.0

    def next(self) -> int:
        if self.fixed is not None:
            return self.fixed
        if not self.documents:
            return FIRST_SHARD
        size = int(SHARD_SECONDS * self.documents / max(self.seconds, 1e-9))
        return max(SHARD_DOCUMENTS[0], min(SHARD_DOCUMENTS[1], size))

    def took(self, documents: int, seconds: float) -> None:
        self.documents, self.seconds = self.documents + documents, self.seconds + seconds


def _attribute(engine, batch: list[Row], target, progress: bool, **attribute_kwargs) -> list:
    """Entries for these rows: DocumentResults (one per class of each row with target "all", per label of
    a multi-label row, or per predicted label of a multi-label model), and (id, reason) for documents left
    out: whose model output or gradient is not finite, or that have no label to explain (they go to
    skipped.csv, never into the results)."""
    if target == "predicted" and is_multi_label(engine.model.config):
        classes = each_predicted_label(engine, [row.text for row in batch], attribute_kwargs.get("max_length"))
        return _attribute_each_class(engine, batch, classes, progress, **attribute_kwargs)
    if target == "label" and isinstance(batch[0].label, list):     # a multi-label data set: each document's labels
        return _attribute_each_class(engine, batch, [row.label for row in batch], progress, **attribute_kwargs)
    if target == "label":
        targets = [row.label for row in batch]
    elif isinstance(target, list):      # --target A,B: those classes of every document
        targets = [target] * len(batch)
    else:
        targets = None if target == "predicted" else target
    return _attributed_rows(engine, batch, targets, progress, **attribute_kwargs)


def each_predicted_label(engine, texts: list, max_length: int | None) -> list[list[int]]:
    """Each text's labels as a multi-label model predicts them (fastig.models.predicted_labels), for target=:
    what `--target predicted` explains on such a model, in `dataset` and `attribute` alike."""
    return [predicted_labels(p) for p in engine.probabilities(texts, max_length)]


def _attribute_each_class(engine, batch: list[Row], classes: list[list[int]], progress: bool,
                          **attribute_kwargs) -> list:
    """_attribute's entries for rows with a list of classes each, of any length: a record per class, a row
    with none skipped."""
    skipped = {row.id: [(row.id, "no label to explain (--target label)")]
               for row, explained in zip(batch, classes) if not explained}
    explained = [(row, row_classes) for row, row_classes in zip(batch, classes) if row_classes]

    def in_order(entries: list) -> list:
        by_row = {**skipped}
        for entry in entries:
            by_row.setdefault(_entry_id(entry), []).append(entry)
        return [entry for row in batch for entry in by_row.get(row.id, ())]
    try:
        entries = _attributed_rows(engine, [row for row, _ in explained], [c for _, c in explained], progress,
                                   **attribute_kwargs) if explained else []
    except (Interrupted, Exception) as stop:     # the skipped rows too
        stop.entries = in_order(getattr(stop, "entries", []))
        raise
    return in_order(entries)


def _attributed_rows(engine, batch: list[Row], targets, progress: bool, **attribute_kwargs) -> list:
    try:
        with warnings.catch_warnings():     # texts cut: counted from the records at the end, not said per shard
            warnings.simplefilter("ignore", TruncationWarning)
            result = engine.attribute([row.text for row in batch], target=targets, progress=progress,
                                      keep_attributions=False, **attribute_kwargs)     # shards hold the records
    except NonFiniteError as error:     # its result: the other rows, each named by its index
        return _entries(batch, error.result.documents if error.result is not None else [], set(error.documents))
    except (Interrupted, Exception) as stop:
        # An interrupt's or an error's result (Engine.attribute): the whole, finite rows done before it, each
        # named by its index.
        stop.entries = _entries(batch, stop.result.documents if getattr(stop, "result", None) is not None else [])
        raise
    rows = text_of_each_record(targets, len(result.documents), len(batch))
    return _entries(batch, [replace(document, id=i) for i, document in zip(rows, result.documents, strict=True)])


def text_of_each_record(targets, records: int, texts: int) -> list[int]:
    """The text each record of a call explains (records text after text): one per class of a text's list of
    targets, as many per text for "all" or one target."""
    per_text = [len(t) for t in targets] if isinstance(targets, list) and isinstance(targets[0], list) else \
        [records // texts] * texts
    return [i for i, count in enumerate(per_text) for _ in range(count)]


def _entries(batch: list[Row], documents: list, broken: set = frozenset()) -> list:
    """In the rows' order: each row's records (`documents`, each named by its row's index) with the row's id,
    label and data id (so that an unfinished run's report shows it), or for a row in `broken` (id, reason): its
    model output or gradient is not finite."""
    by_row = {}
    for document in documents:
        by_row.setdefault(document.id, []).append(document)
    entries = []
    for i, row in enumerate(batch):
        if i in broken:
            entries.append((row.id, "the model's output or gradient is not finite (nan or inf)"))
        else:
            entries += [replace(document, id=row.id, label=row.label, data_id=row.data_id)
                        for document in by_row.get(i, ())]
    return entries


def _write_shard(out: Path, rank: int, entries: list, top_k: int) -> None:
    content = "".join(to_json({"id": e[0], "skipped": e[1]} if isinstance(e, tuple) else e.to_json(top_k)) + "\n"
                      for e in entries)
    write_atomically(out / "shards" / shard_name(content, rank), content)


def attribute_shards(engine, plan: Plan, out: Path, rank: int, target, top_k: int, shard_size: int | None, bar,
                     **attribute_kwargs) -> int:
    """Attribute the plan's documents shard by shard, each shard written whole; returns the token-steps done.
    The bar counts documents and tells the time left by tokens (fastig.engine.TimeLeft)."""
    started, token_steps, sizes, first = time.perf_counter(), 0, ShardSizes(shard_size), 0
    left = TimeLeft(sum(plan.tokens.values()), clock=time.perf_counter)
    while first < len(plan.pending):
        batch = plan.pending[first:first + sizes.next()]
        first += len(batch)
        shard_started = time.perf_counter()
        try:
            entries = _attribute(engine, batch, target, bar is not None and not bar.disable, **attribute_kwargs)
        except (Interrupted, Exception) as stop:    # a stop or an error amid a shard keeps its documents done:
            if getattr(stop, "entries", None):        # a shard of their own
                _write_shard(out, rank, stop.entries, top_k)
            raise
        _write_shard(out, rank, entries, top_k)
        sizes.took(len(batch), time.perf_counter() - shard_started)
        token_steps += sum(len(e.tokens) * e.evaluations for e in entries if not isinstance(e, tuple))
        left.done(sum(plan.tokens[row.id] for row in batch))
        if bar is not None:
            bar.set_postfix_str(f"{token_steps / (time.perf_counter() - started):.0f} token-steps/s, {left} left",
                                refresh=False)
            bar.update(len(batch))
    return token_steps


@dataclass(frozen=True)
class Merged:
    """What the merged outputs hold: documents written, skipped, cut to the model's length, and short of their
    accuracy (or n_steps auto's tolerance): max_steps stopped them first."""
    documents: int
    skipped: int
    cut: int
    short: int


def merge(out: Path, rows: list[Row], skipped: list, top_k: int, labels: dict) -> Merged:
    """index.json, documents.jsonl (every document's records once, by id), documents.csv and skipped.csv from
    the sound shards. A document of the data set that no shard holds is an error, not a missing line."""
    by_shard = sound_shards(out, move_corrupt=True)
    records, skipped = {}, dict(skipped)
    for entries in by_shard.values():
        in_shard = defaultdict(list)        # a document's records (one per target) are written in one shard
        for entry in entries:
            if isinstance(entry, tuple):
                skipped.setdefault(entry[0], entry[1])
            else:
                in_shard[entry.id].append(entry)
        for document, its_records in in_shard.items():
            records.setdefault(document, its_records)      # a document in two shards is merged once
    missing = [row.id for row in rows if row.id not in records and row.id not in skipped]
    if missing:
        raise DataError(f"--out {str(out)!r}: documents {missing[:10]}{' ...' if len(missing) > 10 else ''} are in "
                        "no sound shard; run the same command again to attribute them")
    write_atomically(out / "index.json", to_json({name: list(dict.fromkeys(_entry_id(e) for e in entries))
                                                  for name, entries in by_shard.items()}) + "\n")
    # The data's ids from the rows, not the shards: a run begun without them (or before shards kept them) has them.
    ordered = [replace(record, data_id=row.data_id) for row in rows if row.id in records for record in records[row.id]]
    write_atomically(out / "documents.jsonl", "".join(to_json(r.to_json(top_k)) + "\n" for r in ordered))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    # The classes by id and, last, by the model's names (labels: {"0": "negative", ...}), "; " between a
    # multi-label document's: ids alone sent a reader of the file to the model's config.

    def named(classes) -> str:
        return "" if classes is None else "; ".join(labels.get(str(c), str(c)) for c in
                                                    (classes if isinstance(classes, list) else [classes]))
    # Columns only ever added at the end: a reader by position keeps working. estimated_error: the default call's
    # (blank for a fixed rule or n_steps auto).
    writer.writerow(("id", "label", "prediction", "probability", "target", "delta", "tokens", "truncated_tokens",
                     "label_name", "prediction_name", "target_name", "evaluations", "estimated_error", "data_id"))
    writer.writerows((r.id, r.label, r.prediction, r.probability, r.target, r.delta, len(r.tokens), r.truncated_tokens,
                      named(r.label), named(r.prediction), named(r.target), r.evaluations, r.estimated_error,
                      r.data_id) for r in ordered)
    write_atomically(out / "documents.csv", buffer.getvalue())
    buffer = io.StringIO()
    csv.writer(buffer).writerows([("id", "reason"), *sorted(skipped.items())])
    write_atomically(out / "skipped.csv", buffer.getvalue())
    cut = sum(row.id in records and records[row.id][0].truncated_tokens > 0 for row in rows)
    short = sum(any(r.tolerance_met is False for r in records[row.id]) for row in rows if row.id in records)
    return Merged(sum(row.id in records for row in rows), len(skipped), cut, short)


def run_dataset(engine, rows: list[Row], out: Path, settings: dict, fingerprints: dict, versions: dict, target,
                top_k: int = 20, shard_size: int | None = None, progress: bool = True, state=None,
                **attribute_kwargs) -> dict:
    """Attribute every row not done yet into new shards of `out`; write the merged outputs when all are done.

    target: "label", "predicted", "all" (every class, a record each) or a class index. fingerprints:
    {"data": ..., "model": ...}, the contents compared on resume. attribute_kwargs go to Engine.attribute.
    shard_size: documents per shard (None: about SHARD_SECONDS of work each). state: accelerate's
    PartialState when several processes share the rows (fastig.app.launcher): each takes every N-th of the
    pending rows, longest first, and writes its own shards; the main process holds the run's lock and merges.
    Returns counts of this call (attributed_now: by every process) and this process's timings.
    """
    if shard_size is not None and shard_size < 1:
        raise DataError(f"--shard-size {shard_size}: give at least 1 document per shard")
    rank, processes = (0, 1) if state is None else (state.process_index, state.num_processes)
    wait = (lambda: None) if state is None else state.wait_for_everyone
    lock = RunLock(out) if rank == 0 else nullcontext()
    with lock:
        if rank == 0 and lock.taken_over:
            print(f"fastig dataset: taking over {str(out)!r} from a run that no longer runs ({lock.taken_over})",
                  file=sys.stderr)
        plan = plan_run(engine, rows, out, settings, fingerprints, versions, rank, processes, wait,
                        attribute_kwargs.get("max_length"))
        bar = None
        if progress:
            from tqdm.auto import tqdm
            share = "documents" if processes == 1 else f"documents (the main process's share, 1 of {processes})"
            # tqdm's time left (by documents) left out: attribute_shards tells it by tokens
            bar = tqdm(total=len(plan.pending), unit="doc", desc=share, disable=rank != 0,
                       bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
        started = time.perf_counter()
        try:
            token_steps = attribute_shards(engine, plan, out, rank, target, top_k, shard_size, bar,
                                           **attribute_kwargs)
        finally:
            if bar is not None:
                bar.close()
        summary = {"documents": None, "skipped": len(plan.skipped), "resumed_with": plan.done,
                   "attributed_now": plan.pending_in_all, "processes": processes,
                   "seconds": time.perf_counter() - started, "token_steps": token_steps}
        wait()
        if rank != 0:
            return summary
        merged = merge(out, rows, plan.skipped, top_k, settings.get("labels", {}))  # skipped: before and now
        return {**summary, **asdict(merged)}

"""Whole-data-set runs: every document of a data set attributed into resumable shards.

out/
  manifest.json     the settings (compared on resume) and library versions
  skipped.csv       documents left out, with the reason (empty texts)
  shards/R-NNNNN.jsonl  one record per document, written whole by process R: temp file, fsync, rename
  index.json        which ids each shard holds, written with the merged files
  documents.jsonl   all records sorted by id, and documents.csv one line per document,
                    written once every document is done

A run stopped at any point (Ctrl-C, kill -9) continues where it stopped when the same command
runs again: a shard is either complete on disk or absent, and the ids in complete shards are
the documents done. Records do not depend on which documents shared a shard beyond fp32
rounding (fastig packs documents of similar length into one model call).
"""

import csv
import io
import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import DataError
from ..result import DocumentResult

DATA_READERS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
TARGET_MODES = ("label", "predicted")


@dataclass(frozen=True)
class Row:
    """One document of the data set: its position in the split, its text and its label (or None)."""
    id: int
    text: object
    label: object


def _columns_of(data: str, split: str):
    """The data set as {column: list of values}, from a file, a save_to_disk folder or the hub."""
    path = Path(data)
    if path.is_file():
        import pandas as pd

        kind = DATA_READERS.get(path.suffix.lower())
        if kind is None:
            raise DataError(f"--data {data!r}: unknown file type {path.suffix!r}; "
                            f"give a {', '.join(DATA_READERS)} file, a save_to_disk folder or a hub name")
        try:
            frame = {"csv": lambda: pd.read_csv(path, keep_default_na=False),
                     "json": lambda: pd.read_json(path, lines=path.suffix.lower() == ".jsonl"),
                     "parquet": lambda: pd.read_parquet(path)}[kind]()
        except (OSError, ValueError, ImportError) as err:
            raise DataError(f"--data {data!r}: cannot read it as {kind}: {err}") from err
        return {column: frame[column].tolist() for column in frame.columns}
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
            loaded = datasets.load_dataset(data)
        except Exception as err:      # the hub client raises many kinds; all mean "cannot get it"
            raise DataError(f"--data {data!r}: cannot load it from the Hugging Face hub (is it reachable?): "
                            f"{type(err).__name__}: {err}") from err
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"--split {split!r} is not a split of {data!r}; splits: {', '.join(loaded)}")
        loaded = loaded[split]
    return loaded.to_dict()


def read_rows(data: str, split: str = "test", text_column: str = "text", label_column: str | None = "labels",
              limit: int | None = None, need_labels: bool = False) -> list[Row]:
    """The first `limit` documents (all by default) of the data set, checked before any work starts."""
    columns = _columns_of(data, split)
    if text_column not in columns:
        raise DataError(f"--text-column {text_column!r} is not a column of {data!r}; columns: {', '.join(columns)}")
    if label_column is not None and label_column not in columns:
        if need_labels:
            raise DataError(f"--label-column {label_column!r} is not a column of {data!r} (--target label needs "
                            f"one); columns: {', '.join(columns)}")
        label_column = None
    texts = columns[text_column][:limit]
    labels = columns[label_column][:limit] if label_column is not None else [None] * len(texts)
    if not texts:
        raise DataError(f"--data {data!r} holds no document")
    return [Row(i, text, label) for i, (text, label) in enumerate(zip(texts, labels))]


def class_ids(rows: list[Row], label2id: dict, num_labels: int, need_labels: bool = False) -> list[Row]:
    """Labels as class ids: ints in [0, num_labels), or the model's label names; anything else is refused
    (a missing label too, when `need_labels`)."""
    names = {str(name): int(i) for name, i in (label2id or {}).items()}
    checked = []
    for row in rows:
        label = row.label
        if label is None:
            if need_labels:
                raise DataError(f"document {row.id} has no label (--target label needs one for every document)")
            checked.append(row)
            continue
        if isinstance(label, str) and label in names:
            label = names[label]
        elif isinstance(label, float) and label.is_integer():
            label = int(label)
        elif isinstance(label, str) and label.strip().lstrip("-").isdigit():
            label = int(label)
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < num_labels:
            raise DataError(f"document {row.id}: label {row.label!r} is not a class id of this model "
                            f"(0..{num_labels - 1}" + (f" or one of {', '.join(names)}" if names else "") + ")")
        checked.append(Row(row.id, row.text, label))
    return checked


def _skip_reason(text, tokenizer) -> tuple[str | None, int]:
    """Why a document is left out (None: it is not), and its number of text tokens."""
    if text is None or isinstance(text, float) and math.isnan(text):
        return "no text", 0
    if not isinstance(text, str):
        return f"text is a {type(text).__name__}, not a string", 0
    if not text.strip():
        return "empty text", 0
    length = len(tokenizer.encode(text, add_special_tokens=False))
    return (None if length else "no token once tokenized"), length


def _write_atomically(path: Path, text: str) -> None:
    """Write, flush and fsync a temporary file, then rename it over `path`: readers see all or nothing."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def check_manifest(out: Path, settings: dict, versions: dict, write: bool = True) -> None:
    """Start a run in `out` (the manifest written if `write`), or resume one with the same settings;
    a difference is refused by name."""
    path = out / "manifest.json"
    if path.exists():
        before = json.loads(path.read_text(encoding="utf-8"))["settings"]
        changed = [f"{key} {before.get(key)!r} (then) vs {settings.get(key)!r} (now)"
                   for key in sorted(set(before) | set(settings)) if before.get(key) != settings.get(key)]
        if changed:
            raise DataError(f"--out {str(out)!r} holds a run with other settings: {'; '.join(changed)}; "
                            "run with the same settings to resume it, or use another --out")
        return
    if write:
        _write_atomically(path, json.dumps({"settings": settings, "versions": versions}, indent=1) + "\n")


def shards(out: Path) -> list[Path]:
    """The complete shards of a run, in the order they were written."""
    return sorted((out / "shards").glob("[0-9]*.jsonl"))


def read_records(paths: list[Path]) -> list[DocumentResult]:
    return [DocumentResult.from_json(json.loads(line)) for path in paths
            for line in path.read_text(encoding="utf-8").splitlines() if line]


@dataclass
class Plan:
    """What one process of a run does: its share of the documents still to attribute (longest first),
    how many documents were done before, what is skipped and why, and the name of its next shard."""
    pending: list
    done: int
    skipped: list
    next_shard: int


def plan_run(engine, rows: list[Row], out: Path, settings: dict, versions: dict, rank: int, processes: int,
             wait) -> Plan:
    """Start or resume the run in `out` (the manifest checked), record the skipped documents, and deal
    the documents no shard holds yet to the processes."""
    if rank == 0:
        (out / "shards").mkdir(parents=True, exist_ok=True)
    wait()
    check_manifest(out, settings, versions, write=rank == 0)
    for stale in (out / "shards").glob(f".{rank}-*.tmp"):   # a shard this process did not finish last time
        stale.unlink()
    reasons, lengths = {}, {}
    for row in rows:
        reasons[row.id], lengths[row.id] = _skip_reason(row.text, engine.tokenizer)
    skipped = [(i, reason) for i, reason in reasons.items() if reason is not None]
    if rank == 0:
        buffer = io.StringIO()
        csv.writer(buffer).writerows([("id", "reason"), *skipped])
        _write_atomically(out / "skipped.csv", buffer.getvalue())
    done = {record.id for record in read_records(shards(out))}
    wait()      # every process has seen the same shards before any writes a new one
    pending = [row for row in rows if row.id not in done and reasons[row.id] is None]
    # Longest first, in shards of similar lengths: the engine packs them into shared calls. Dealt
    # round-robin, each process gets a similar share of tokens.
    pending.sort(key=lambda row: (-lengths[row.id], row.id))
    return Plan(pending[rank::processes], len(done), skipped, len(list((out / "shards").glob(f"{rank}-*.jsonl"))))


def attribute_shards(engine, plan: Plan, out: Path, rank: int, target, top_k: int, shard_size: int, bar,
                     **attribute_kwargs) -> int:
    """Attribute the plan's documents shard by shard, each shard written whole; returns the token-steps done."""
    started, token_steps, written = time.perf_counter(), 0, plan.next_shard
    for first in range(0, len(plan.pending), shard_size):
        batch = plan.pending[first:first + shard_size]
        targets = [row.label for row in batch] if target == "label" else None if target == "predicted" else target
        result = engine.attribute([row.text for row in batch], target=targets, **attribute_kwargs)
        records = [replace(document, id=row.id, label=row.label) for row, document in zip(batch, result.documents)]
        _write_atomically(out / "shards" / f"{rank}-{written:05d}.jsonl",
                          "".join(json.dumps(r.to_json(top_k)) + "\n" for r in records))
        written += 1
        token_steps += sum(len(r.tokens) * r.evaluations for r in records)
        if bar is not None:
            bar.update(len(batch))
            bar.set_postfix_str(f"{token_steps / (time.perf_counter() - started):.0f} token-steps/s")
    return token_steps


def merge(out: Path, top_k: int) -> int:
    """index.json, documents.jsonl (every record, by id) and documents.csv from all the shards; returns the count."""
    by_shard = {path.name: read_records([path]) for path in shards(out)}
    _write_atomically(out / "index.json", json.dumps({name: [r.id for r in rs] for name, rs in by_shard.items()}) + "\n")
    records = sorted((r for rs in by_shard.values() for r in rs), key=lambda r: r.id)
    _write_atomically(out / "documents.jsonl", "".join(json.dumps(r.to_json(top_k)) + "\n" for r in records))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(("id", "label", "prediction", "probability", "target", "delta", "tokens"))
    writer.writerows((r.id, r.label, r.prediction, r.probability, r.target, r.delta, len(r.tokens)) for r in records)
    _write_atomically(out / "documents.csv", buffer.getvalue())
    return len(records)


def run_dataset(engine, rows: list[Row], out: Path, settings: dict, versions: dict, target, top_k: int = 20,
                shard_size: int = 32, progress: bool = True, state=None, **attribute_kwargs) -> dict:
    """Attribute every row not done yet into new shards of `out`; write the merged outputs when all are done.

    target: "label", "predicted" or a class index. attribute_kwargs go to Engine.attribute
    (n_steps, method, baseline, output, max_length). state: accelerate's PartialState when
    several processes share the rows (fastig.app.launcher): each takes every N-th of the
    pending rows, longest first, and writes its own shards; the main process merges.
    Returns counts and timings of this call (this process's share).
    """
    if shard_size < 1:
        raise DataError(f"--shard-size {shard_size}: give at least 1 document per shard")
    rank, processes = (0, 1) if state is None else (state.process_index, state.num_processes)
    wait = (lambda: None) if state is None else state.wait_for_everyone
    plan = plan_run(engine, rows, out, settings, versions, rank, processes, wait)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        share = "documents" if processes == 1 else f"documents (the main process's share, 1 of {processes})"
        bar = tqdm(total=len(plan.pending), unit="doc", desc=share, disable=rank != 0)
    started = time.perf_counter()
    try:
        token_steps = attribute_shards(engine, plan, out, rank, target, top_k, shard_size, bar, **attribute_kwargs)
    finally:
        if bar is not None:
            bar.close()
    summary = {"documents": None, "skipped": len(plan.skipped), "resumed_with": plan.done,
               "attributed_now": len(plan.pending), "seconds": time.perf_counter() - started,
               "token_steps": token_steps}
    wait()
    if rank != 0:
        return summary
    return {**summary, "documents": merge(out, top_k)}

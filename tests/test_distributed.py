"""Two CPU processes under accelerate launch (gloo): the results of one process, and an error if a rank dies."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import hanging_after_shards, make_text
from test_cli import exit_code

TEXTS = [make_text(6 + 4 * i, seed=10 + i) for i in range(8)]


@pytest.fixture(scope="module")
def model_dir(saved_model):
    return str(saved_model("bert"))


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "docs.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "labels"), *((t, i % 3) for i, t in enumerate(TEXTS))])
    return path


def _fastig(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastig", *args], capture_output=True, text=True, timeout=300,
                          **kwargs)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "documents.jsonl").read_text().splitlines()]


def _close(a: list, b: list, tolerance: float) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("n_steps", ["24", "auto"])
def test_steps_split_over_two_processes_give_the_single_process_result(model_dir, tmp_path, n_steps):
    args = ["attribute", "--model", model_dir, "--text", TEXTS[7], "--text", TEXTS[2], "--n-steps", n_steps,
            *(["--tolerance", "1e-4"] if n_steps == "auto" else [])]
    assert exit_code([*args, "--out", str(tmp_path / "one.json")]) == 0
    launched = _fastig(*args, "--processes", "2", "--out", str(tmp_path / "two.json"))
    # The ranks' own tracebacks: the launcher's report after them names only the exit codes.
    assert launched.returncode == 0, "\n".join(line for line in launched.stderr.splitlines() if "[rank" in line)[-3000:]
    assert launched.stdout.count("document 0:") == 1          # the main process alone prints
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    # auto: past the first 7 points, into the refinement rounds. Its choices read F at each point: at
    # 1e-5 they met fp32 rounding, which differs with how the processes batch the points.
    if n_steps == "auto":
        evaluations = [[d["evaluations"] for d in run["documents"]] for run in (one, two)]
        assert max(evaluations[0]) > 7 and evaluations[0] == evaluations[1]
    one, two = one["documents"], two["documents"]
    for a, b in zip(one, two, strict=True):
        assert a["tokens"] == b["tokens"] and a["prediction"] == b["prediction"]
        # fp32 rounding, which differs from process to process (up to 2e-7 seen): unit-norm scores, and
        # each point's integrand (a sum of L x H products) relative to the largest.
        assert _close(a["token_scores"], b["token_scores"], 2e-6)
        assert _close(a["integrand"], b["integrand"], 1e-5 * max(map(abs, a["integrand"])))
        assert abs(a["delta"] - b["delta"]) <= 1e-6
        assert a.get("alphas") == b.get("alphas")         # auto: the same points chosen in both


@pytest.mark.slow
def test_documents_split_over_two_processes_give_the_single_process_files(model_dir, data_file, tmp_path):
    args = ["dataset", "--model", model_dir, "--data", str(data_file), "--n-steps", "8", "--shard-size", "2",
            "--target", "label"]
    assert exit_code([*args, "--out", str(tmp_path / "one")]) == 0
    launched = _fastig(*args, "--processes", "2", "--out", str(tmp_path / "two"))
    assert launched.returncode == 0, launched.stderr[-2000:]
    # the closing line counts both processes' documents (it counted the main process's share alone)
    assert f": {len(TEXTS)} attributed now by 2 processes (" in launched.stdout, launched.stdout
    shards = sorted(p.name for p in (tmp_path / "two" / "shards").iterdir())
    assert {name[0] for name in shards} == {"0", "1"}          # both processes wrote
    one, two = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert [r["id"] for r in two] == [r["id"] for r in one] == list(range(len(TEXTS)))
    for a, b in zip(one, two):
        assert (a["tokens"], a["label"], a["prediction"], a["target"]) == (b["tokens"], b["label"], b["prediction"],
                                                                          b["target"])
        assert _close(a["token_scores"], b["token_scores"], 1e-6) and abs(a["delta"] - b["delta"]) <= 1e-6
    for name in ("skipped.csv", "manifest.json"):
        assert (tmp_path / "one" / name).read_text() == (tmp_path / "two" / name).read_text()
    index = json.loads((tmp_path / "two" / "index.json").read_text())
    assert sorted(i for ids in index.values() for i in ids) == list(range(len(TEXTS)))


def _workers(marker: str) -> dict[int, int]:
    """{LOCAL_RANK: pid} of the fastig worker processes whose command line holds `marker`."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environment = dict(item.split(b"=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                               if b"=" in item)
        except OSError:
            continue
        if marker.encode() in command and b"LOCAL_RANK" in environment:
            found[int(environment[b"LOCAL_RANK"])] = int(pid)
    return found


def _processes(marker: str) -> list[int]:
    """The pids of live processes (not zombies) whose command line holds `marker`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker.encode() in command and state != "Z":
            found.append(int(pid))
    return [pid for pid in found if pid != os.getpid()]


@pytest.mark.slow
def test_a_killed_rank_ends_the_run_with_an_error_and_loses_nothing(model_dir, data_file, tmp_path):
    out = tmp_path / "killed"
    args = ["dataset", "--model", model_dir, "--data", str(data_file), "--n-steps", "8", "--shard-size", "1",
            "--out", str(out)]
    # Each rank stops still after its first shard, so the kill lands midway however loaded the machine is.
    process = subprocess.Popen([sys.executable, "-m", "fastig", *args, "--processes", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=hanging_after_shards(1, tmp_path / "hang"))
    try:
        deadline = time.monotonic() + 300
        while len(list((out / "shards").glob("1-*.jsonl"))) < 1:
            assert process.poll() is None and time.monotonic() < deadline, "rank 1 wrote no shard"
            time.sleep(0.1)
        os.kill(_workers(str(out))[1], signal.SIGKILL)
        started = time.monotonic()
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0 and time.monotonic() - started < 60
    assert "fastig" in stderr and ("FAILED" in stderr or "Signal 9" in stderr or "SIGKILL" in stderr), stderr[-2000:]
    assert not (out / "documents.jsonl").exists()
    finished = _fastig(*args)                                   # the same command, one process: it completes
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert [r["id"] for r in _records(out)] == list(range(len(TEXTS)))
    assert "from before" in finished.stdout and " 0 from before" not in finished.stdout


def test_processes_inside_a_launched_run_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert exit_code(["attribute", "--model", "m", "--text", "a", "--processes", "2"]) == 2
    assert "--processes inside accelerate launch" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("stop, everyone", [(signal.SIGKILL, False), (signal.SIGTERM, False), (signal.SIGTERM, True)],
                         ids=["kill-9", "sigterm", "sigterm-to-every-process"])
def test_a_stopped_command_stops_every_rank_and_the_resume_loses_nothing(model_dir, data_file, tmp_path, stop,
                                                                         everyone):
    """kill -9 or SIGTERM of the command alone (a container's stop signals its first process only), or a
    SIGTERM to every process at once (Slurm's way at a time limit or scancel): no rank writes on. A SIGTERM
    stops the ranks as it stops one process: rank 0 says how to resume, exit 130, the run's lock released;
    after a kill -9 the next run takes the lock over."""
    out = tmp_path / "run"
    args = ["dataset", "--model", model_dir, "--data", str(data_file), "--n-steps", "8", "--shard-size", "1",
            "--out", str(out)]
    # Each rank computes on after its first shard, so the stop lands while both ranks are alive and busy.
    process = subprocess.Popen([sys.executable, "-m", "fastig", *args, "--processes", "2"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True,
                               env=hanging_after_shards(1, tmp_path / "hang", computing=True))
    try:
        deadline = time.monotonic() + 300
        while len(_workers(str(out))) < 2 or len(list((out / "shards").glob("*.jsonl"))) < 2:
            assert process.poll() is None and time.monotonic() < deadline, "the ranks did not start"
            time.sleep(0.1)
        for pid in dict.fromkeys([process.pid, *(_processes(str(out)) if everyone else [])]):
            os.kill(pid, stop)
        _, stderr = process.communicate(timeout=120)
        deadline = time.monotonic() + 60
        while _processes(str(out)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _processes(str(out)), "the launcher or ranks outlived the command"
    finally:
        for pid in _processes(str(out)):
            os.kill(pid, signal.SIGKILL)
    if stop == signal.SIGTERM:
        assert process.returncode == 130, stderr[-2000:]
        lines = [line for line in stderr.splitlines() if line.startswith("fastig dataset: interrupted")]
        assert lines == ["fastig dataset: interrupted; run the same command again to continue where it stopped"]
        assert (out / ".lock").read_text() == ""
    finished = _fastig(*args)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert ("taking over" in finished.stderr) == (stop == signal.SIGKILL), finished.stderr[-2000:]
    assert [r["id"] for r in _records(out)] == list(range(len(TEXTS)))


@pytest.mark.slow
def test_a_fastig_py_in_the_current_folder_does_not_run_in_the_ranks(model_dir, tmp_path):
    import shutil

    (tmp_path / "fastig.py").write_text("open('ran', 'w').write('the shadowing module ran')\n")
    # The installed command: `python -m fastig` typed in that folder would run it, as Python does for any -m.
    command = shutil.which("fastig", path=str(Path(sys.executable).parent))
    done = subprocess.run([command, "attribute", "--model", model_dir, "--text", TEXTS[1], "--n-steps", "4",
                           "--processes", "2"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not (tmp_path / "ran").exists() and done.stdout.count("document 0:") == 1

"""Engine(compile=...): the model step's layers through torch.compile give the eager results, leave the model
as it was, and time the compiling calls apart from the speed search."""

import subprocess
import sys

import pytest

import fastig
from conftest import assert_close, make_text
from fastig.app.text import run_line
from fastig.errors import InputError

N_STEPS = 12


def _texts(lengths):
    return [make_text(n, seed=n) for n in lengths]


def _assert_same_results(compiled, eager):
    for d, (ours, theirs) in enumerate(zip(compiled.attributions, eager.attributions)):
        assert_close(ours, theirs, rtol=1e-4, atol=1e-6, what=f"document {d}'s attributions")
    assert_close(compiled.delta, eager.delta, rtol=1e-4, atol=1e-6, what="delta")


def test_compiled_bert_step_gives_the_eager_results_and_leaves_the_model_as_it_was(models, tokenizer):
    model = models("bert")
    texts = _texts([23, 9])              # two lengths in one group: padding inside the compiled step
    eager = fastig.Engine(model, tokenizer).attribute(texts, n_steps=N_STEPS, target=1)
    compiled = fastig.Engine(model, tokenizer, compile="default").attribute(texts, n_steps=N_STEPS, target=1)
    _assert_same_results(compiled, eager)
    assert compiled.stats.compile == "default" and eager.stats.compile is None
    assert compiled.stats.to_dict()["compile"] == "default"
    assert all(p.requires_grad for p in model.parameters())
    assert not any("forward" in m.__dict__ for m in model.modules())     # no compiled forward left behind


@pytest.mark.slow
def test_compiled_longformer_step_is_whole_graphs_also_when_it_recomputes(models, tokenizer):
    """Longformer's banded attention (global CLS, padding, the first-token last layer) compiles without a graph
    break (a break leaves eager code between the compiled pieces, CUDA graphs included, and torch prints a
    warning for it): its global tokens are read before the layers run. A call that recomputes its layers (a
    tight memory budget) compiles the checkpointed layers too, and gives the eager results."""
    from torch._dynamo.utils import counters

    model = models("longformer")
    texts = _texts([40, 13])
    engine = fastig.Engine(model, tokenizer, compile="default")
    eager = fastig.Engine(model, tokenizer).attribute(texts, n_steps=N_STEPS, chunk_size=8)
    breaks = sum(counters["graph_break"].values())
    _assert_same_results(engine.attribute(texts, n_steps=N_STEPS, chunk_size=8), eager)
    engine.scheduler.recompute_layers = True
    recomputed = engine.attribute(texts, n_steps=N_STEPS, chunk_size=8)
    assert recomputed.stats.memory.recompute_layers
    assert recomputed.stats.seconds.compile > 0             # compiled, not run eager
    _assert_same_results(recomputed, eager)
    assert sum(counters["graph_break"].values()) == breaks, dict(counters["graph_break"])


def test_a_compiling_call_is_timed_apart_and_not_used_to_size_calls(models, tokenizer, monkeypatch):
    """The first calls of a compiled step take the compiler's seconds: they are stats.seconds.compile, and the
    call-size search measures only calls that did not compile."""
    import fastig.integrate

    graphs = iter([0, 1] + [1] * 1000)          # the first model call makes a graph, none after
    monkeypatch.setattr(fastig.integrate, "compilations", lambda: next(graphs))
    engine = fastig.Engine(models("bert"), tokenizer)
    timed = []
    measured = engine.scheduler.timed
    monkeypatch.setattr(engine.scheduler, "timed", lambda *args: (timed.append(args), measured(*args)))
    result = engine.attribute(_texts([30]), n_steps=N_STEPS, chunk_size=3)
    seconds = result.stats.seconds
    assert result.stats.model_calls == 4 and len(timed) == 3
    assert seconds.compile > 0 and seconds.model > 0
    assert f"{seconds.compile:.2f} s of them compiling" in run_line(result)


def test_an_unknown_compile_mode_is_refused_by_name(models, tokenizer):
    with pytest.raises(InputError, match=r"compile='fast' is unknown; allowed: None .*reduce-overhead"):
        fastig.Engine(models("bert"), tokenizer, compile="fast")


def test_cli_compile_mode_is_checked_before_any_work(saved_model):
    folder = saved_model("bert")
    done = subprocess.run([sys.executable, "-m", "fastig", "attribute", "--model", str(folder), "--text", "a good film",
                           "--compile", "fast"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--compile" in done.stderr and "reduce-overhead" in done.stderr

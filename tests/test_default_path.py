"""The default call: the attribution within its stated accuracy of the converged one, and the precision
chosen by its check; asking for anything of Captum's gives Captum's computation."""

import json
import re

import pytest
import torch

import fastig
from fastig import targeted
from fastig.reference import MAX_REL_L2, _pearson, captum_attribute, compare

from conftest import make_text

TEXTS = [make_text(30, seed=1), make_text(8, seed=2), make_text(60, seed=3)]


def _relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def converged(models, tokenizer):
    """Each family's attributions with 512 Gauss-Legendre points in fp32: the reference the accuracy is of."""
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = fastig.Engine(models(family), tokenizer).attribute(TEXTS, n_steps=512)
        return cache[family]
    return get


@pytest.fixture
def fp32_only(monkeypatch):
    """The default as on a CPU without AMX (the 2-core EPYC): fp32 only, whatever this machine has; the bf16
    check, which GPUs and AMX CPUs (an Intel Xeon of this kind, seen 2026-12-03) run, has its own test below."""
    monkeypatch.setattr(fastig.engine, "default_path_precision", lambda device: None)


@pytest.mark.parametrize("family", ["bert", "roberta", "longformer", "distilbert", "electra", "albert", "big-bird"])
def test_the_default_meets_its_accuracy_where_it_says_so(models, tokenizer, converged, family, fp32_only):
    result = fastig.Engine(models(family), tokenizer).attribute(TEXTS)
    reference = converged(family)
    assert result.n_steps is None and result.stats.accuracy == 2e-2
    for i, document in enumerate(result.documents):
        assert document.precision == "fp32" and document.precision_error is None
        assert len(document.alphas) == len(document.integrand) and document.evaluations <= 1024
        if not document.tolerance_met:      # the rough tiny DistilBERT: the max_steps cap, and said so
            continue
        gap, ends = document.output_at_input - document.output_at_baseline, \
            abs(document.output_at_input) + abs(document.output_at_baseline)
        assert document.estimated_error <= 2e-2 / 4 and abs(document.delta) <= max(1e-3 * abs(gap), 1e-5 * ends)
        assert _relative_l2(result.attributions[i], reference.attributions[i]) <= 2e-2
        assert _pearson(result.token_scores[i], reference.token_scores[i]) >= 0.999
    assert sum(d.tolerance_met for d in result.documents) >= 1


def test_a_smooth_path_takes_the_first_round_only(tokenizer, fp32_only):
    """Random weights of the usual scale give a near-linear path: the first round's 9 points, in one model call
    where no precision is checked."""
    from conftest import MODEL_CLASSES, _config

    config = _config("bert")
    config.initializer_range = 0.02
    torch.manual_seed(0)
    model = MODEL_CLASSES["bert"](config).eval()
    engine = fastig.Engine(model, tokenizer)
    engine.attribute(TEXTS[0])      # the calls at a new length measure its memory and speed first
    result = engine.attribute(TEXTS[0])
    reference = fastig.Engine(model, tokenizer).attribute(TEXTS[0], n_steps=256)
    assert result.documents[0].evaluations == targeted.FIRST_ROUND + 1 < 50
    assert result.stats.model_calls == 1
    assert result.documents[0].tolerance_met
    assert _relative_l2(result.attributions[0], reference.attributions[0]) <= 2e-2 / 4


@pytest.mark.parametrize("asked", [dict(n_steps=16), dict(method="riemann_trapezoid"), dict(precision="fp32")])
def test_asking_for_anything_of_captums_gives_captums_computation(models, tokenizer, asked):
    precision = asked.pop("precision", "auto")
    engine = fastig.Engine(models("roberta"), tokenizer, precision=precision)
    result = engine.attribute(TEXTS[:2], **asked)
    n_steps, method = asked.get("n_steps", 50), asked.get("method", "gausslegendre")
    assert result.n_steps == n_steps and result.method == method
    assert all(d.evaluations == n_steps and d.precision is None for d in result.documents)
    theirs = captum_attribute(engine, TEXTS[:2], n_steps=n_steps, method=method)
    assert compare(result, theirs).rel_l2 <= MAX_REL_L2


def test_low_precision_runs_where_its_check_passes_and_fp32_elsewhere(models, tokenizer, monkeypatch):
    """As on a GPU or an AMX CPU: bf16 is tried, each document checked at alpha = 1/2 against fp32."""
    monkeypatch.setattr(fastig.engine, "default_path_precision", lambda device: "bf16")
    engine = fastig.Engine(models("bert"), tokenizer)
    fp32 = fastig.Engine(models("bert"), tokenizer, precision="fp32").attribute(TEXTS, n_steps=256)
    lenient = engine.attribute(TEXTS, accuracy=0.5)         # bf16's error is far within half of 0.5
    assert [d.precision for d in lenient.documents] == ["bf16"] * 3
    strict = engine.attribute(TEXTS, accuracy=1e-4)         # and never within 5e-5
    assert [d.precision for d in strict.documents] == ["fp32"] * 3
    for i, (a, b) in enumerate(zip(lenient.documents, strict.documents)):
        assert a.precision_error == pytest.approx(b.precision_error) and 0 < a.precision_error < 0.25
        assert b.evaluations >= targeted.FIRST_ROUND + 2       # the check's bf16 evaluation counts
        assert _relative_l2(lenient.attributions[i], fp32.attributions[i]) <= 0.5
        assert _relative_l2(strict.attributions[i], fp32.attributions[i]) <= 1e-4 or not b.tolerance_met


def test_max_steps_bounds_the_default_and_says_the_accuracy_was_not_met(models, tokenizer):
    result = fastig.Engine(models("distilbert"), tokenizer).attribute(TEXTS[0], accuracy=1e-6, max_steps=30)
    document = result.documents[0]
    assert document.evaluations <= 30 and document.tolerance_met is False and document.evaluations_allowed == 30


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(n_steps=50, accuracy=1e-3), r"accuracy=0.001 is for the default call, .* \(here n_steps=50: Captum's"),
    (dict(method="riemann_middle", accuracy=1e-3), r"\(here method='riemann_middle': Captum's"),
    (dict(n_steps=50, tolerance=1e-4), r"tolerance=0.0001 is for n_steps='auto' \(here n_steps=50\)"),
    (dict(tolerance=1e-4), r"tolerance=0.0001 is for n_steps='auto' \(here n_steps=None\); the default call takes"),
    (dict(n_steps=50, max_steps=64), r"max_steps=64 bounds the default call and n_steps='auto'; n_steps=50 takes")])
def test_a_setting_of_another_rule_is_refused_not_ignored(models, tokenizer, kwargs, fragment, saved_model, capsys):
    """accuracy=1e-3 with n_steps=50 ran Captum's 50 steps and said nothing: a setting the call's rule does not
    read is refused, naming the rule that reads it; each is taken where it applies, and also on the command line."""
    engine = fastig.Engine(models("bert"), tokenizer)
    with pytest.raises(fastig.MethodError, match=fragment):
        engine.attribute("the film", **kwargs)
    engine.attribute("the film", accuracy=1e-3, max_steps=64)
    engine.attribute("the film", n_steps="auto", tolerance=1e-4, max_steps=64)
    with pytest.raises(fastig.MethodError, match="accuracy=0.001 is for the default call"):
        fastig.Engine(models("bert"), tokenizer, precision="bf16").attribute("the film", accuracy=1e-3)
    from test_cli import exit_code

    flags = [f"--{name.replace('_', '-')}={value}" for name, value in kwargs.items()]
    assert exit_code(["attribute", "--model", str(saved_model("bert")), "--text", "the film", *flags]) == 2
    assert re.search(fragment, capsys.readouterr().err.splitlines()[-1])


@pytest.mark.parametrize("kwargs, fragment", [(dict(accuracy=0), "accuracy=0"), (dict(accuracy=1.5), "accuracy=1.5"),
                                              (dict(accuracy="high"), "accuracy='high'"),
                                              (dict(max_steps=8), "max_steps=8")])
def test_bad_default_settings_are_refused(models, tokenizer, kwargs, fragment):
    with pytest.raises(fastig.MethodError, match=fragment):
        fastig.Engine(models("bert"), tokenizer).attribute("the film", **kwargs)


def test_the_command_says_what_the_default_call_spent_and_the_error_it_estimates(saved_model, tmp_path, capsys):
    """`fastig attribute` without --n-steps printed each document's delta, but neither the evaluations it took nor
    the error the README promises it states: the run line gives both, and says where max_steps cut it short."""
    from test_cli import exit_code

    out = tmp_path / "result.json"
    model = str(saved_model("distilbert"))
    for accuracy, max_steps in (("2e-2", "1024"), ("1e-6", "30")):
        assert exit_code(["attribute", "--model", model, "--text", TEXTS[0], "--text", TEXTS[1],
                          "--accuracy", accuracy, "--max-steps", max_steps, "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        documents = json.loads(out.read_text())["documents"]
        evaluations = sorted(d["evaluations"] for d in documents)
        spent = f"{evaluations[0]}-{evaluations[1]}" if evaluations[0] != evaluations[1] else f"{evaluations[0]}"
        worst = max(d["estimated_error"] for d in documents)
        assert f"accuracy {float(accuracy):g}: {spent} model evaluations per document, estimated error up to " \
               f"{worst:.1e}" in printed
        unmet = sum(not d["tolerance_met"] for d in documents)
        assert (f"not met by {unmet} of 2 (stopped at --max-steps {max_steps})" if unmet else "met by all 2") in printed
    assert unmet == 2
    # a text's explanations for every class: each integrated on its own, and counted as such
    assert exit_code(["attribute", "--model", model, "--text", TEXTS[1], "--target", "all", "--max-steps", "30"]) == 0
    assert re.search(r"model evaluations per explanation, .* \((met by all 3|not met by [123] of 3)",
                     capsys.readouterr().out)

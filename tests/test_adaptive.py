"""n_steps="auto": the tolerance is met, the attributions are the converged ones, and it takes fewer evaluations."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import fastig
from fastig.adaptive import STENCIL, composite_rule, integrate_adaptive
from fastig.result import TimeSplit

from conftest import make_text
from test_cli import exit_code

TEXTS = [make_text(30, seed=1), make_text(8, seed=2), make_text(60, seed=3)]


def test_composite_rule_integrates_polynomials_exactly_on_any_points():
    rng = np.random.default_rng(0)
    for n in (STENCIL, 7, 12, 40):
        # uneven points, as refinement leaves them: some gaps 2^-10 wide next to wide ones
        inner = np.sort(np.concatenate([rng.uniform(0, 1, n - 4), 0.3 + 2.0 ** -np.arange(10, 12)]))
        points = np.concatenate([[0.0], inner, [1.0]])
        weights, stencil, gap_weights = composite_rule(points)
        for degree in range(STENCIL):
            assert weights @ points ** degree == pytest.approx(1 / (degree + 1), abs=1e-10)
            exact = (points[1:] ** (degree + 1) - points[:-1] ** (degree + 1)) / (degree + 1)
            assert np.allclose((gap_weights * points[stencil] ** degree).sum(1), exact, atol=1e-12)


def _kinked_path(direction: torch.Tensor):
    """evaluate() for a path whose F has a kink in slope at 0.37, as a ReLU switching gives:
    s = |alpha - 0.37| + 0.1 and dF/dz = s * direction."""
    def F(a):
        return np.where(a < 0.37, -(0.37 - a) ** 2 / 2, (a - 0.37) ** 2 / 2) + 0.1 * a

    def evaluate(docs, alphas):
        a = alphas.double().numpy()
        s = torch.tensor(np.abs(a - 0.37) + 0.1, dtype=torch.float32)
        return SimpleNamespace(gradient_sum=s[:, None, None] * direction, integrand=s[:, None],
                               outputs=torch.tensor(F(a), dtype=torch.float32)[:, None], seconds=TimeSplit(),
                               sequences_per_call=[len(a)], fallbacks=0)
    return evaluate, float(F(1.0) - F(0.0))


def _gauss_legendre_error(n: int) -> float:
    nodes, weights = np.polynomial.legendre.leggauss(n)
    exact = 0.37 ** 2 / 2 + 0.63 ** 2 / 2 + 0.1
    return abs(0.5 * weights @ (np.abs(0.5 * (nodes + 1) - 0.37) + 0.1) - exact) / exact


@pytest.mark.parametrize("tolerance", [1e-2, 1e-3, 1e-4])
def test_a_kink_is_found_and_every_evaluated_point_is_in_the_final_rule(tolerance):
    direction = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    evaluate, gap = _kinked_path(direction)
    zeros = torch.zeros(1, 2, 2)
    result = integrate_adaptive(evaluate, zeros, zeros + 1, torch.tensor([gap]), tolerance, max_steps=1024)
    evaluations = result.evaluations[0]
    assert result.met == [True] and evaluations == len(result.alphas[0]) == len(result.integrand[0])
    # The attribution is the final rule's sum over all the points: (sum_k w_k s_k) * direction.
    integral = result.gradient_sum[0] / direction
    assert torch.allclose(integral, torch.full_like(integral, gap), rtol=tolerance)
    if tolerance == 1e-4:
        # Gauss-Legendre converges slowly across a kink: three times the points still miss the tolerance.
        assert _gauss_legendre_error(3 * evaluations) > tolerance


def _uniform_steps_needed(engine, text: str, tolerance: float, gap: float) -> int:
    """The fewest riemann_trapezoid steps (doubling from 2) meeting the tolerance; 4096 if none up to 2048."""
    n = 2
    while n <= 2048:
        if abs(float(engine.attribute(text, n_steps=n, method="riemann_trapezoid").delta[0])) <= tolerance * abs(gap):
            return n
        n *= 2
    return 4096


@pytest.mark.parametrize("family", ["bert", "roberta", "longformer", "distilbert"])
@pytest.mark.parametrize("tolerance", [1e-2, 1e-3])
def test_auto_meets_the_tolerance_with_fewer_evaluations_than_a_uniform_rule(models, tokenizer, family, tolerance):
    engine = fastig.Engine(models(family), tokenizer)
    result = engine.attribute(TEXTS, n_steps="auto", tolerance=tolerance)
    reference = engine.attribute(TEXTS, n_steps=2048)
    gap = result.output_at_input - result.output_at_baseline
    assert [d.tolerance_met for d in result.documents] == [True] * len(TEXTS)
    assert bool(((result.delta.abs() / gap.abs()) <= tolerance * 1.001).all())
    uniform = []
    for i, text in enumerate(TEXTS):
        ours, theirs = result.attributions[i], reference.attributions[i]
        # The tolerance bounds the scalar integral; the vector's error is larger where s(alpha) cancels
        # (1.7e-2 at 1e-3 on the tiny DistilBERT, whose 2048-point reference is itself off by up to 1e-3).
        assert float((ours - theirs).norm() / theirs.norm()) <= 20 * tolerance
        evaluations = result.documents[i].evaluations
        assert len(result.alphas[i]) == evaluations <= 1024       # every evaluated point is in the final rule
        uniform.append(_uniform_steps_needed(engine, text, tolerance, float(gap[i])))
    # Fewer in all. Not per document: on the tiny DistilBERT s(alpha) is rough (Gauss-Legendre's delta still
    # swings by 1e-2 up to 512 points) and a uniform rule can meet 1e-2 by luck with fewer points than auto.
    if tolerance <= 1e-3:
        evaluations = [d.evaluations for d in result.documents]
        assert sum(evaluations) < sum(uniform), (evaluations, uniform)


def test_max_steps_bounds_the_work_and_says_the_tolerance_was_not_met(models, tokenizer):
    result = fastig.Engine(models("distilbert"), tokenizer).attribute(TEXTS[0], n_steps="auto", tolerance=1e-9,
                                                                      max_steps=100)
    assert result.documents[0].evaluations <= 100 and result.documents[0].tolerance_met is False
    assert result.integrand[0].shape == result.alphas[0].shape


@pytest.mark.parametrize("kwargs, fragment", [(dict(tolerance=0), "tolerance=0"), (dict(tolerance=2.0), "tolerance=2.0"),
                                              (dict(max_steps=3), "max_steps=3")])
def test_bad_auto_settings_are_refused(models, tokenizer, kwargs, fragment):
    with pytest.raises(fastig.MethodError, match=fragment):
        fastig.Engine(models("bert"), tokenizer).attribute("the film", n_steps="auto", **kwargs)


def test_cli_auto_and_its_report(saved_model, tmp_path, capsys):
    model = str(saved_model("bert"))
    out = tmp_path / "auto.json"
    assert exit_code(["attribute", "--model", model, "--text", TEXTS[0], "--n-steps", "auto", "--tolerance", "1e-4",
                      "--out", str(out)]) == 0
    assert "n_steps auto:" in capsys.readouterr().out
    assert (out.with_suffix(".report") / "document-0.html").read_text().count("polyline") == 1
    assert exit_code(["check", "--model", model, "--text", "a", "--n-steps", "auto"]) == 2
    assert "needs a fixed number of steps" in capsys.readouterr().err


def test_held_gradients_stay_within_half_the_room_the_memory_budget_leaves(models, tokenizer, monkeypatch):
    engine = fastig.Engine(models("distilbert"), tokenizer, memory_budget=10**9)
    point_bytes = len(engine.documents(TEXTS[0])[0].input_ids) * models("distilbert").config.dim * 4
    # As if the process already used all but the room for 2 x 12 points' gradients.
    monkeypatch.setattr(engine.scheduler.meter, "in_use", lambda: 10**9 - 2 * 12 * point_bytes)
    result = engine.attribute(TEXTS[0], n_steps="auto", tolerance=1e-9, max_steps=1024)
    assert result.documents[0].evaluations_allowed == 12 and result.documents[0].tolerance_met is False
    assert result.documents[0].evaluations <= 12 and engine.scheduler.held_bytes == 0

import pytest
import torch
from captum.attr._utils.approximation_methods import approximation_parameters

from fastig import MethodError
from fastig.quadrature import METHODS, rule


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n_steps", [2, 3, 7, 50, 257])
def test_alphas_and_weights_are_captums(method, n_steps):
    step_sizes, alphas = approximation_parameters(method)
    ours_alphas, ours_weights = rule(method, n_steps)
    # Captum multiplies by python-float alphas and by float32 step sizes.
    assert torch.equal(ours_alphas, torch.tensor(alphas(n_steps), dtype=torch.float32))
    assert torch.equal(ours_weights, torch.tensor(step_sizes(n_steps)).float())


@pytest.mark.parametrize("method", METHODS)
def test_weights_integrate_constants(method):
    _, weights = rule(method, 33)
    # Captum's trapezoid rule spaces n points by 1/n, not 1/(n-1): its weights sum to 1 - 1/n.
    expected = 1 - 1 / 33 if method == "riemann_trapezoid" else 1.0
    assert abs(float(weights.double().sum()) - expected) < 1e-6


def test_gausslegendre_allows_one_step():
    alphas, weights = rule("gausslegendre", 1)
    assert alphas.tolist() == [0.5] and weights.tolist() == [1.0]


@pytest.mark.parametrize("method, n_steps, fragment", [
    ("riemann_left", 1, "n_steps >= 2"),
    ("gausslegendre", 0, "n_steps >= 1"),
    ("gausslegendre", -5, "n_steps >= 1"),
    ("gausslegendre", 2.5, "positive integer"),
    ("simpson", 10, "method='simpson' is unknown"),
])
def test_bad_rule_arguments_name_the_argument(method, n_steps, fragment):
    with pytest.raises(MethodError, match=fragment):
        rule(method, n_steps)

"""What the calls' options may be, and their defaults, as plain values: no torch here, so that the command line
builds its parser from them and `fastig --help`, `--version` or a mistyped flag answers at once (3.6 s on the
2-core EPYC when the parser's module imported the core, 2.6 of them importing torch; 0.1 s now)."""

RIEMANN_RULES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
METHODS = RIEMANN_RULES + ("gausslegendre",)
CAPTUM_DEFAULT_STEPS = 50   # LayerIntegratedGradients.attribute's n_steps, with method="gausslegendre"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OUTPUTS = ("probs", "sigmoid", "logits")
ATTENTIONS = ("banded", "model")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEFAULT_ACCURACY, DEFAULT_TOLERANCE, DEFAULT_MAX_STEPS = 2e-2, 1e-3, 1024
DEFAULT_MEMORY_BUDGET = "80%"


def uses_default_path(n_steps, method: str | None, precision: str) -> bool:
    """Whether `attribute` takes the default path: nothing of Captum's asked for (n_steps, method and
    precision at their defaults). Otherwise it computes Captum's rule (gausslegendre, 50 steps by default)."""
    return n_steps is None and method is None and precision == "auto"

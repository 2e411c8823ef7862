"""`fastig.captum`: Captum's LayerIntegratedGradients, computed by fastig's step loop where it can.

For tools that already call Captum: the same class (a subclass of Captum's), constructor,
`attribute` signature, defaults, argument semantics, return types and shapes; the installed
captum is the oracle. The fast path integrates with fastig's step loop (fused interpolation
at the layer, fp32 accumulation, the layer's own work skipped during the steps, F(x) and
F(b) taken from the forwards that give the layer's endpoints instead of two more); calls it
does not cover go to Captum's own code, counted in `fallback_calls` and logged at debug level.

    from fastig.captum import LayerIntegratedGradients      # instead of captum.attr's

or change nothing in the tool and run it under `fastig.patch_captum()`.
"""

import logging
import sys
import time
import warnings

import torch
from captum._utils.common import _format_additional_forward_args, _format_outputs, _run_forward
from captum.attr import LayerIntegratedGradients as CaptumLayerIntegratedGradients
from captum.attr._utils.common import _format_input_baseline, _tensorize_baseline, _validate_input

from . import kernels, quadrature
from .integrate import integrate_path
from .models import output_captured, output_replaced
from .precision import resolve
from .result import RunStats
from .scheduler import DEFAULT_MEMORY_BUDGET, Scheduler, cpu_memory_retained

logger = logging.getLogger(__name__)


class LayerIntegratedGradients(CaptumLayerIntegratedGradients):
    """captum.attr.LayerIntegratedGradients, faster where fastig's path applies.

    `attribute` takes Captum's arguments and two more, keyword-only, whose defaults are
    Captum's behaviour: precision (None: the model as it is; "bf16", "fp16", "fp32" or "auto"
    runs the steps' forward under autocast, accumulation stays fp32) and memory_budget
    (None: Captum's chunking, all steps in one call unless internal_batch_size; a budget such
    as "6GB" or "80%" lets fastig size the calls, see fastig.Engine).

    After each call: `last_path` is "fastig" or "captum", `last_fallback_reason` says why
    Captum ran, `fast_calls` and `fallback_calls` count both, `last_stats` holds fastig's
    timings and call sizes (a fastig.RunStats; None after a call Captum ran).
    """

    def __init__(self, forward_func, layer, device_ids=None, multiply_by_inputs: bool = True) -> None:
        super().__init__(forward_func, layer, device_ids=device_ids, multiply_by_inputs=multiply_by_inputs)
        self.fast_calls = self.fallback_calls = 0
        self.last_path = self.last_fallback_reason = None
        self.last_stats = None
        self._schedulers = {}

    def attribute(self, inputs, baselines=None, target=None, additional_forward_args=None, n_steps: int = 50,
                  method: str = "gausslegendre", internal_batch_size=None, return_convergence_delta: bool = False,
                  attribute_to_layer_input: bool = False, grad_kwargs=None, *, precision=None, memory_budget=None):
        reason = self._unsupported(attribute_to_layer_input, grad_kwargs, n_steps)
        if reason is None:
            result = self._fast_attribute(inputs, baselines, target, additional_forward_args, n_steps, method,
                                          internal_batch_size, return_convergence_delta, precision, memory_budget)
            if not isinstance(result, str):
                self.fast_calls += 1
                self.last_path, self.last_fallback_reason = "fastig", None
                return result
            reason = result
        logger.debug("fastig.captum: Captum's LayerIntegratedGradients runs this call: %s", reason)
        self.fallback_calls += 1
        self.last_path, self.last_fallback_reason, self.last_stats = "captum", reason, None
        return super().attribute(inputs, baselines, target, additional_forward_args, n_steps, method,
                                 internal_batch_size, return_convergence_delta, attribute_to_layer_input, grad_kwargs)

    def _unsupported(self, attribute_to_layer_input, grad_kwargs, n_steps) -> str | None:
        """Why the fast path cannot take this call, judged from the arguments alone (None: it can try)."""
        if self.device_ids is None:
            self.device_ids = getattr(self.forward_func, "device_ids", None)
        if isinstance(self.layer, list):
            return "a list of layers"
        if attribute_to_layer_input:
            return "attribute_to_layer_input=True"
        if grad_kwargs:
            return "grad_kwargs"
        if self.device_ids:
            return "device_ids (DataParallel)"
        if not isinstance(n_steps, int) or n_steps < 1:
            return f"n_steps={n_steps!r}"
        return None

    def _fast_attribute(self, inputs, baselines, target, additional_forward_args, n_steps, method,
                        internal_batch_size, return_convergence_delta, precision, memory_budget):
        """The attribution as Captum returns it, or a str saying why Captum must compute it instead."""
        started = time.perf_counter()
        inputs_tuple, baselines_tuple = _format_input_baseline(inputs, baselines)
        _validate_input(inputs_tuple, baselines_tuple, n_steps, method)     # Captum's own errors
        baselines_tuple = _tensorize_baseline(inputs_tuple, baselines_tuple)
        additional = _format_additional_forward_args(additional_forward_args)
        examples = inputs_tuple[0].shape[0]
        reason = _rows_unsupported(examples, inputs_tuple, baselines_tuple, additional, target)
        if reason is not None:
            return reason

        end, score_x = self._endpoint(inputs_tuple, additional, target)
        if isinstance(end, str):
            return end
        start, _ = self._endpoint(baselines_tuple, additional, target)
        if isinstance(start, str) or start.shape != end.shape:
            return start if isinstance(start, str) else "layer outputs of different shapes at inputs and baselines"
        if score_x.ndim == 0 or score_x.shape[0] != examples or score_x.numel() != examples:   # [N] or [N, 1]
            return "the forward function's output is not one scalar per example for this target"
        if end.dtype == torch.float64:
            return "a float64 layer output: Captum integrates it in float64, fastig's path in fp32"

        layer_shape, layer_dtype = end.shape[1:], end.dtype
        end, start = _as_path(end), _as_path(start)
        precision = resolve("fp32" if precision is None else precision, end.device)
        chunk_size = None
        if internal_batch_size is not None:
            if internal_batch_size < examples:
                warnings.warn("Internal batch size cannot be less than the number of input examples. Defaulting to "
                              f"internal batch size of {examples} equal to the number of examples.", stacklevel=2)
            chunk_size = max(1, internal_batch_size // examples) * examples
        elif memory_budget is None:
            chunk_size = examples * n_steps      # Captum's default: every step in one call
        scheduler = self._scheduler(end.device, memory_budget)
        scheduler.start_run()

        def score_from_layer(z, rows):
            with output_replaced(self.layer, z.view(len(z), *layer_shape).to(layer_dtype)):
                scores = _run_forward(self.forward_func, (), _rows_of_target(target, rows),
                                      _rows_of(inputs_tuple + (additional or ()), rows, examples))
            return scores.reshape(len(rows))     # [c] also where the forward returns [c, 1] (target None)

        alphas, weights = quadrature.rule(method, n_steps)
        t0 = time.perf_counter()
        path = integrate_path(score_from_layer, start, end, alphas, weights, scheduler, chunk_size,
                              precision=precision)
        t1 = time.perf_counter()
        if self.multiplies_by_inputs:
            attributions, _ = kernels.finalize(path.difference, path.gradient_sum)
        else:
            attributions = path.gradient_sum
        # Captum's dtype: a half layer's gradients times its float32 step sizes are float32 (so is its delta).
        attributions = attributions.view(examples, *layer_shape).to(torch.promote_types(layer_dtype, torch.float32))
        seconds = path.seconds
        seconds.endpoints, seconds.finalize = t0 - started, time.perf_counter() - t1
        seconds.total = time.perf_counter() - started
        self.last_stats = RunStats(
            device=str(end.device), precision=precision.name, attention="model",
            retains_cpu_memory=end.device.type == "cpu" and cpu_memory_retained(), fallbacks=path.fallbacks,
            documents_per_group=[examples], chunk_size=[max(path.sequences_per_call)],
            model_calls=len(path.sequences_per_call), memory=scheduler.run_stats(), seconds=seconds,
            token_steps_per_s=examples * end.shape[1] * n_steps / max(seconds.total, 1e-12))
        output = _format_outputs(False, [(attributions,)])
        if not return_convergence_delta:
            return output
        # Captum's own delta, with its two last forwards (at the baselines, then at the inputs): tools
        # that keep state from their forward function (transformers-interpret's predicted probabilities)
        # read it from the last call, which must be at the inputs as in Captum.
        return output, self.compute_convergence_delta(attributions, baselines_tuple, inputs_tuple,
                                                      additional_forward_args=additional, target=target)

    def _endpoint(self, inputs_tuple, additional, target):
        """The layer's output [N, ...] and the target scores [N] at these inputs, from one forward."""
        captured = []
        with torch.no_grad(), output_captured(self.layer, captured):
            scores = _run_forward(self.forward_func, inputs_tuple, target, additional)
        if len(captured) != 1:
            return f"the layer ran {len(captured)} times in one forward", None
        if not isinstance(captured[0], torch.Tensor) or captured[0].ndim == 0:
            return "the layer's output is not a tensor with a batch dimension", None
        return captured[0].detach(), scores.detach()

    def _scheduler(self, device: torch.device, memory_budget) -> Scheduler:
        """One scheduler per device and budget, so that probes and out-of-memory sizes carry over."""
        key = (str(device), memory_budget)
        if key not in self._schedulers:
            self._schedulers[key] = Scheduler(device, DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget)
        return self._schedulers[key]


def _as_path(layer_output: torch.Tensor) -> torch.Tensor:
    """[N, ...] -> [N, L, H] fp32, the layout of fastig's step loop (L the first dimension after the batch)."""
    n = layer_output.shape[0]
    if layer_output.ndim == 1:
        return layer_output.float().reshape(n, 1, 1)
    if layer_output.ndim == 2:
        return layer_output.float().reshape(n, 1, -1)
    return layer_output.float().reshape(n, layer_output.shape[1], -1)


def _rows_unsupported(examples: int, inputs_tuple, baselines_tuple, additional, target) -> str | None:
    """Captum repeats every tensor argument along dimension 0 per step; picking rows by example
    gives the same arguments only where dimension 0 is the examples'."""
    for name, tensors in (("input", inputs_tuple), ("baseline", baselines_tuple)):
        if any(t.ndim == 0 or t.shape[0] != examples for t in tensors):
            return f"an {name} whose first dimension is not the {examples} examples"
    if isinstance(target, list) and len(target) != examples:
        return "a target list whose length is not the number of examples"
    if isinstance(target, torch.Tensor) and target.numel() > 1 and (target.ndim != 1 or len(target) != examples):
        return "a target tensor that is not one index per example"
    return None


def _rows_of(arguments: tuple, rows: torch.Tensor, examples: int) -> tuple:
    """The arguments of a call of these rows, as Captum expands them: a tensor with one row per example
    at the examples of `rows`; any other tensor (a 1-D tensor of target tokens, as Captum's
    LLMGradientAttribution passes) repeated along dimension 0 once per step in the call, as Captum
    repeats it; non-tensors and 0-d tensors as they are."""
    steps_in_call = -(-len(rows) // examples)
    return tuple(a if not isinstance(a, torch.Tensor) or a.ndim == 0
                 else a[rows.to(a.device)] if a.shape[0] == examples
                 else torch.cat([a] * steps_in_call) for a in arguments)


def _rows_of_target(target, rows: torch.Tensor):
    """Captum's target expansion, for rows in any order: per-example targets follow their example."""
    if isinstance(target, list):
        return [target[i] for i in rows.tolist()]
    if isinstance(target, torch.Tensor) and target.numel() > 1:
        return target[rows.to(target.device)]
    return target


_ORIGINAL = CaptumLayerIntegratedGradients
_patched = []       # (module, attribute name) pairs now holding fastig's class


class _Patch:
    """What patch_captum() returns: used as a context manager, it unpatches on exit."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        unpatch_captum()


def patch_captum() -> _Patch:
    """Make captum.attr.LayerIntegratedGradients fastig's class, everywhere a tool gets it from.

    Every loaded module attribute bound to Captum's class (captum.attr, its defining module,
    and tools that imported the name before this call) is rebound, and modules imported
    later get fastig's class from captum.attr. Undone by unpatch_captum(), or at the end of
    a `with fastig.patch_captum():` block.
    """
    import captum.attr  # noqa: F401  (so that the modules to patch are loaded)

    for module in list(sys.modules.values()):
        names = getattr(module, "__dict__", {})
        for name, value in list(names.items()):
            if value is _ORIGINAL and module is not sys.modules[__name__]:
                setattr(module, name, LayerIntegratedGradients)
                _patched.append((module, name))
    return _Patch()


def unpatch_captum() -> None:
    """Give back Captum's own LayerIntegratedGradients wherever patch_captum() put fastig's."""
    while _patched:
        module, name = _patched.pop()
        if getattr(module, name, None) is LayerIntegratedGradients:
            setattr(module, name, _ORIGINAL)

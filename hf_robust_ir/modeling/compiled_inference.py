"""Compiled inference towers: ``torch.compile`` with inductor *freezing* for encoding large corpora.

Freezing treats the weights as constants of the compiled graph, so inductor folds the bf16 casts of autocast into
the constants, pre-packs the matrices for oneDNN (AMX on CPUs that have it) and fuses the elementwise tails of each
layer (bias + GELU, residual + LayerNorm). Measured on all-MiniLM-L6-v2, 256 tokens, bf16 autocast, one CPU thread
with AMX-BF16: 1.4-1.7x the documents/s of the eager tower, after a one-off compile of 15-35 s (see
``benchmarks/THROUGHPUT.md``), so it pays off from a few thousand documents on.

Because the weights are baked in, a compiled tower is only valid for the weights it was built from:
:class:`CompiledTower` records every parameter's storage and in-place version counter (which the optimizer's
in-place updates, ``load_state_dict`` and ``.to()`` all change) and :meth:`CompiledTower.is_current` says when it
must be rebuilt, so encoding between training steps never uses stale weights.
"""

from __future__ import annotations

import itertools
import logging
import types
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Below this many texts in one encode call the one-off compile costs more than it saves (break-even is ~3,000
# full-length documents on a CPU with AMX-BF16). Not measured on GPUs, where eager encoding is so fast that the compile
# pays off only for much larger corpora: there it is opt-in.
AUTO_COMPILE_MIN_TEXTS = 10_000


_tower_numbers = itertools.count()


def _run_tower(module: nn.Module, inputs: dict[str, torch.Tensor]) -> Any:
    return module(**inputs)


def _fresh_entry_point() -> types.FunctionType:
    """A copy of :func:`_run_tower` with its own code object.

    torch.compile keeps compiled graphs (and their guards) per code object; guards check shapes and types, not
    weight values. A new ``torch.compile(module)`` of an updated module would therefore reuse the graph frozen with the
    old weights. Giving every :class:`CompiledTower` its own entry point gives it its own cache.
    """
    name = f"compiled_tower_{next(_tower_numbers)}"
    code = _run_tower.__code__.replace(co_name=name)  # a new code object (co_qualname exists from Python 3.11 only)
    return types.FunctionType(code, _run_tower.__globals__, name)


def weights_version(module: nn.Module) -> tuple:
    """Identity of a module's current weights: storage pointer, in-place version, dtype and device of each parameter
    and buffer."""
    tensors = list(module.parameters()) + list(module.buffers())
    return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)


class CompiledTower:
    """A tower compiled for inference (dynamic shapes, inductor freezing), tied to the weights it was built from.

    The tower is compiled whole (``fullgraph=True``): a graph break would hand the rest of the forward to frames whose
    compiled code is shared with other towers, where frozen weights could leak between them. Calls run under
    ``torch._inductor.config.patch(freezing=True)`` so that the first call (when inductor compiles) and any
    recompilation freeze the weights. A batch of one sequence runs the eager tower: compiling with dynamic
    shapes specializes size 1, and a second compile for one last odd batch would cost more than it saves.
    If compilation fails (no C++ compiler, an unsupported operator), the tower logs a warning once and stays eager.
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.version = weights_version(module)
        self.compiled = torch.compile(_fresh_entry_point(), dynamic=True, fullgraph=True)
        self.failed = False

    def is_current(self, module: nn.Module) -> bool:
        return module is self.module and weights_version(module) == self.version

    def __call__(self, **inputs: torch.Tensor) -> Any:
        if self.failed or inputs["input_ids"].shape[0] < 2:
            return self.module(**inputs)
        import torch._inductor.config as inductor_config

        try:
            with inductor_config.patch(freezing=True):
                return self.compiled(self.module, inputs)
        except Exception as error:  # noqa: BLE001 - any backend failure: fall back to the eager tower
            self.failed = True
            reason = f"{type(error).__name__}: {error}"
            logger.warning("torch.compile of the encoder failed (%s); encoding eagerly", reason)
            return self.module(**inputs)


def should_compile(compile: bool | None, n_texts: int, bf16: bool, device_type: str = "cpu") -> bool:
    """``compile=None`` (auto) compiles for bf16 encoding of at least :data:`AUTO_COMPILE_MIN_TEXTS` texts on CPU."""
    if compile is not None:
        return bool(compile)
    return bf16 and device_type == "cpu" and n_texts >= AUTO_COMPILE_MIN_TEXTS

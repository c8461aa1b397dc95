"""Models by name for request runs: each (name, device, dtype, compile) loaded once and shared, thread-safe."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Mapping

import torch

from ..core.errors import UsageError
from ..models.contract import Model

TORCH_DTYPES = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


def compiled(model: Model) -> Model:
    """The model with its networks wrapped in torch.compile (the sampler's own step stays eager)."""
    def wrap(den):
        try:
            return den.replace(net=torch.compile(den.net))
        except RuntimeError as e:  # e.g. no C++ compiler for the inductor backend
            raise UsageError(f"compile failed: {str(e).splitlines()[0]}") from None

    return dataclasses.replace(model, denoiser=wrap(model.denoiser),
                               students={k: wrap(d) for k, d in model.students.items()})


class ModelStore:
    """Loads models by name. `allowed`: None lets any spec through (a local user's CLI); a mapping of configured
    names to specs (or a list of specs, each served under itself) admits only those names."""

    def __init__(self, allowed: Mapping[str, str] | Iterable[str] | None = None) -> None:
        if allowed is not None and not isinstance(allowed, Mapping):
            allowed = {s: s for s in allowed}
        self.allowed = None if allowed is None else dict(allowed)
        self._models: dict[tuple, Model] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return sorted(self.allowed) if self.allowed is not None else []

    def spec(self, name: str) -> str:
        if self.allowed is None:
            return name
        if name not in self.allowed:
            raise UsageError(f"model {name!r} is not served here; choose one of {', '.join(self.names())}")
        return self.allowed[name]

    def get(self, name: str, device: str = "cpu", dtype: str = "float32", compile: bool = False) -> Model:
        """The model `name` on `device` with its networks in `dtype` (loaded on first use, then shared)."""
        from ..io.inputs import resolve_device
        from ..io.loader import load_model

        spec = self.spec(name)
        dev = resolve_device(device)
        key = (spec, str(dev), dtype, compile)
        with self._lock:  # one load per key, even when concurrent runs ask at once
            model = self._models.get(key)
            if model is None:
                model = load_model(spec, dev, TORCH_DTYPES[dtype])
                model = compiled(model) if compile else model
                self._models[key] = model
        return model

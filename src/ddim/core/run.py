"""One run (a sampling or inversion pass): its counts and flags, returned to the caller, not kept on the model.

`Tracked` is a Denoiser seen through one run: each network call is counted and its output's sum recorded on
the device; `finish()` checks them all for NaN/inf with one host sync, naming the first bad step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import ModelOutputError
from .prediction import Denoiser


@dataclass
class RunStats:
    """What a run reports: network evaluations, and the step where early exit stopped it (None: ran to the end)."""

    nfe: int = 0
    early_exit_step: int | None = None


@dataclass(frozen=True, slots=True)
class StepInfo:
    """What a per-step callback receives: step index, level, the new state and the x̂0 it came from."""

    i: int
    t: float
    x: torch.Tensor
    denoised: torch.Tensor | None


Callback = Callable[[StepInfo], None]


class Tracked:
    """The Denoiser's prediction interface, counting calls into a RunStats and recording outputs for the NaN check."""

    __slots__ = ("_t", "_watch", "den", "path", "stats")

    def __init__(self, den: Denoiser, stats: RunStats | None = None) -> None:
        self.den = den
        self.path = den.path
        self.stats = stats if stats is not None else RunStats()
        self._watch: torch.Tensor | None = None  # one growing buffer, not a tensor per call: no heap growth
        self._t: list[float] = []

    def raw(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """One network call: counted, its sum recorded on the device (no sync)."""
        out = self.den.call_net(x, t)
        self.stats.nfe += self.den.branches(t)
        n, w = len(self._t), self._watch
        if w is None or n == len(w):
            grown = torch.empty(max(64, 2 * n), dtype=out.dtype, device=out.device)
            if w is not None:
                grown[:n].copy_(w)
            self._watch = w = grown
        w[n] = out.sum()
        self._t.append(t)
        return out

    def __call__(self, x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(ε̂, x̂0) at level t."""
        return self.den.split(x, t, self.raw(x, t))

    def denoise(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """x̂0 only: for solvers that work on the data prediction alone."""
        return self.den.x0_from_output(x, t, self.raw(x, t))

    def finish(self) -> None:
        """One host sync: raise ModelOutputError naming the first call whose output had NaN or inf."""
        if not self._t:
            return
        ts = self._t
        ok = torch.isfinite(self._watch[:len(ts)])
        self._watch, self._t = None, []
        if not bool(ok.all()):
            first = int((~ok).nonzero()[0, 0])
            raise ModelOutputError(f"model output contains NaN or inf at network call {first + 1} "
                                   f"(timestep t={ts[first]})")

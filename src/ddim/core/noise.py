"""Per-sample noise streams: sample i's x_T and every fresh noise it draws come from its own seed.

That makes a sample independent of the batch around it. Noise is drawn on the CPU (so the same seed
gives the same bits on any device) in chunks of several steps, so the per-step cost in the sampler
loop is a slice, not B generator calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .errors import UsageError

# Elements per sample drawn in one go; fixed per sample shape so the stream never depends on the batch.
_CHUNK_ELEMENTS = 1 << 16
_MAX_CHUNK_STEPS = 64


class SeededNoise:
    """One torch.Generator per sample; `initial()` gives x_T, each call gives the next step's noise."""

    def __init__(self, seeds: Sequence[int], sample_shape: Sequence[int], *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise UsageError("at least one seed is needed")
        if any(s < 0 or s >= 2**63 for s in seeds):
            raise UsageError("seeds must lie in 0..2**63-1")
        self.seeds = seeds
        self.sample_shape = tuple(int(d) for d in sample_shape)
        self.dtype = dtype
        self.device = torch.device(device)
        self._gens = [torch.Generator().manual_seed(s) for s in seeds]
        numel = 1
        for d in self.sample_shape:
            numel *= d
        self._chunk = max(1, min(_MAX_CHUNK_STEPS, _CHUNK_ELEMENTS // max(numel, 1)))
        self._buf: torch.Tensor | None = None
        self._pos = 0
        self._drawn_initial = False

    def _draw(self, k: int) -> torch.Tensor:
        rows = [torch.randn((k, *self.sample_shape), generator=g, dtype=self.dtype) for g in self._gens]
        return torch.stack(rows, dim=1).to(self.device)  # (k, B, *shape)

    def initial(self) -> torch.Tensor:
        """x_T: the first draw of every stream, shape (B, *sample_shape)."""
        if self._drawn_initial:
            raise RuntimeError("initial noise was already drawn from these streams")
        self._drawn_initial = True
        return self._draw(1)[0]

    def __call__(self) -> torch.Tensor:
        """The next step's noise, shape (B, *sample_shape)."""
        if self._buf is None or self._pos >= self._buf.shape[0]:
            self._drawn_initial = True
            self._buf = self._draw(self._chunk)
            self._pos = 0
        out = self._buf[self._pos]
        self._pos += 1
        return out


NoiseLike = SeededNoise | torch.Generator | Callable[[], torch.Tensor] | None


def noise_fn(generator: NoiseLike, like: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Turn a sampler's `generator` argument into a zero-argument callable giving noise shaped like `like`."""
    if isinstance(generator, SeededNoise):
        if generator.sample_shape != tuple(like.shape[1:]) or len(generator.seeds) != like.shape[0]:
            raise UsageError(f"noise streams are for {len(generator.seeds)} samples of shape "
                             f"{generator.sample_shape}, but x has shape {tuple(like.shape)}")
        return generator
    if isinstance(generator, torch.Generator):
        gen_device = generator.device

        def draw() -> torch.Tensor:
            return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=gen_device).to(like.device)

        return draw
    if generator is None:
        return lambda: torch.randn_like(like)
    if callable(generator):  # a zero-argument function giving noise shaped like x (replayed noise, tests)
        return generator
    raise TypeError("generator must be a SeededNoise, a torch.Generator, a callable or None, "
                    f"got {type(generator).__name__}")

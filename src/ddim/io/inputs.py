"""User-given specs → tensors and devices: data rows to encode, latent edit directions, torch devices."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..core.errors import UsageError
from ..core.prediction import Denoiser
from .data import digits
from .data import load as load_data


def resolve_device(spec: str) -> torch.device:
    """A torch device that exists here, or a one-line UsageError (`cuda` on a CPU-only build, a typo)."""
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise UsageError(f"unknown device {spec!r} (e.g. cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {spec!r}: this torch build or machine has no CUDA")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device {spec!r}: MPS is not available here")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unsupported device {spec!r} (cpu, cuda or mps)")
    return dev


def load_inputs(source: str, sample_shape: Sequence[int | None], *, index: Sequence[int] | None = None,
                n: int | None = None) -> torch.Tensor:
    """Rows of a dataset (a built-in name or a .npy/.npz file): the rows in `index`, or the first `n`. A None
    entry of `sample_shape` takes any size (latent models: the size is checked against the model afterwards)."""
    x = load_data(source)
    if len(x.shape) != len(sample_shape) + 1 or any(
            want is not None and got != want for got, want in zip(x.shape[1:], sample_shape, strict=False)):
        want = "(" + ", ".join("any" if v is None else str(v) for v in sample_shape) + ")"
        raise UsageError(f"inputs have sample shape {tuple(x.shape[1:])}, the model takes {want}")
    if index:
        bad = [i for i in index if not 0 <= i < x.shape[0]]
        if bad:
            raise UsageError(f"index {bad} out of range 0..{x.shape[0] - 1}")
        return x[list(index)]
    return x[:n]


def load_direction(spec: str, den: Denoiser, sample_shape: Sequence[int], *, examples: int = 64,
                   steps: int = 50, timesteps: torch.Tensor | None = None) -> torch.Tensor:
    """A latent direction: `class:A-B` (mean digits encoding of class A minus class B) or a .npy/.npz file."""
    from ..ops.latent import direction_from_examples

    if spec.startswith("class:"):
        try:
            a, b = (int(v) for v in spec[6:].split("-"))
        except ValueError:
            raise UsageError("a class direction is class:A-B with two digit classes, e.g. class:3-8") from None
        if not (0 <= a <= 9 and 0 <= b <= 9):
            raise UsageError(f"digit classes lie in 0..9, got class:{a}-{b}")
        xd, yd = digits()
        if tuple(xd.shape[1:]) != tuple(sample_shape):
            raise UsageError("class directions are for models of sklearn's 8x8 digits")
        return direction_from_examples(den, xd[yd == a][:examples], xd[yd == b][:examples], steps,
                                       timesteps=timesteps)
    d = load_data(spec)
    d = d[0] if d.shape[0] == 1 else d
    if tuple(d.shape) != tuple(sample_shape):
        raise UsageError(f"direction {spec} has shape {tuple(d.shape)}, the model takes {tuple(sample_shape)}")
    return d.to(torch.float32)


def input_labels(source: str, *, index: Sequence[int] | None = None, n: int | None = None) -> torch.Tensor:
    """The class labels of the rows `load_inputs` returns (labelled data only)."""
    from .data import labels

    y = labels(source)
    return y[list(index)] if index else y[:n]


def class_labels(spec: str, n: int) -> torch.Tensor:
    """`--class 7` or `--class 1,2,3`: one class, or a list cycled over the n samples (sample i gets
    classes[i mod k], whatever the batching)."""
    try:
        classes = [int(v) for v in str(spec).split(",")]
    except ValueError:
        raise UsageError(f"--class takes a class number or a comma list of them, got {spec!r}") from None
    return torch.tensor([classes[i % len(classes)] for i in range(n)], dtype=torch.long)

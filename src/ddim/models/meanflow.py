"""MeanFlow networks (Geng et al. 2025): u_θ(z, r, t), the average velocity over [r, t], as a UNet2DModel whose
second time embedding (diffusers' `class_embed_type="timestep"`) takes the interval h = t − r.

One step of length h is exact for the average velocity: z_r = z_t − h·u(z_t, r, t) (MeanFlow eq. 5), which is the
DDIM / Euler step of a flow model whose network is told h. So a MeanFlow model samples `n` uniform steps as the
flow-prediction view at h = 1/n (`interval_views`), and at h = 0 it is the instantaneous velocity v(z, t), which
every flow sampler takes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.prediction import Denoiser

#: the keyword the interval goes in (UNet2DModel's second timestep embedding)
INTERVAL_INPUT = "class_labels"
#: the file that marks a MeanFlow model folder
MEANFLOW_FILE = "meanflow.json"


def meanflow_record() -> dict[str, Any]:
    """What `meanflow.json` says: the method, where the interval goes, how the folder samples."""
    return {"method": "MeanFlow (Geng et al. 2025): average velocity u(z, r, t)", "interval_input": INTERVAL_INPUT,
            "interval_units": "(t - r) * num_train_timesteps", "sampler": "ddim", "spacing": "uniform"}


def forward_ad_ready(net: nn.Module) -> None:
    """Let forward-mode AD (torch.func.jvp) run through a diffusers UNet: GroupNorm's forward derivative needs a
    contiguous input, which attention blocks' outputs are not."""
    for m in net.modules():
        if isinstance(m, nn.GroupNorm):
            m.register_forward_pre_hook(lambda _m, args: (args[0].contiguous(), *args[1:]))


class IntervalNet(nn.Module):
    """A view of a MeanFlow network with a fixed interval: forward(x, t) = net(x, t, class_labels=h·T)."""

    def __init__(self, net: nn.Module, h_input: float) -> None:
        super().__init__()
        self.net = net
        self.h_input = float(h_input)
        self._h: dict[tuple[Any, ...], torch.Tensor] = {}  # memo: the interval row per (batch, device, dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kw: Any) -> Any:
        key = (t.shape, t.device, t.dtype)
        h = self._h.get(key)
        if h is None:
            if len(self._h) > 16:
                self._h.clear()
            h = self._h[key] = torch.full(t.shape, self.h_input, dtype=t.dtype, device=t.device)
        return self.net(x, t, **{INTERVAL_INPUT: h}, **kw)


def interval_views(den: Denoiser, max_steps: int = 8) -> tuple[Denoiser, dict[int, Denoiser]]:
    """(the instantaneous-velocity denoiser at h = 0, {n: the view at h = 1/n for n uniform steps}) of a
    Denoiser whose network is a MeanFlow UNet; the views share its weights."""
    T = float(den.path.time_scale)
    base = den.replace(net=IntervalNet(den.net, 0.0))
    return base, {n: den.replace(net=IntervalNet(den.net, T / n)) for n in range(1, max_steps + 1)}


def start_from_flow(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a flow model's (or a MeanFlow model's) weights into a MeanFlow UNet; a new interval embedding starts
    with a zero output layer, so the network starts as exactly the flow model at every interval."""
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("class_embedding.") for k in missing):
        raise RuntimeError(f"not a flow UNet of this shape: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if missing:
        with torch.no_grad():
            net.class_embedding.linear_2.weight.zero_()
            net.class_embedding.linear_2.bias.zero_()


def is_meanflow_unet(net: Any) -> bool:
    """True for a UNet2DModel with a timestep-type second embedding (the interval input)."""
    return getattr(getattr(net, "config", None), "class_embed_type", None) == "timestep"

"""A small digits classifier the project trains itself: its 64-d penultimate features give a Fréchet
distance for 8×8 digits, and its predictions give class coverage."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..io.checkpoint import load_state_into, save_tensors

FEATURE_DIM = 64


class DigitsClassifier(nn.Module):
    """conv(1→32) → conv(32→64, stride 2) → 64-d features → 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.SiLU(),
            nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.SiLU(),
            nn.Flatten(), nn.Linear(64 * 4 * 4, FEATURE_DIM), nn.SiLU())
        self.head = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.clamp(-1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_digits_classifier(out: str | Path | None = None, steps: int = 1500, seed: int = 0,
                            progress: bool = False) -> tuple[DigitsClassifier, float]:
    """Train on 1500 of sklearn's digits (light Gaussian-noise augmentation), report held-out accuracy on
    the other 297; optionally save the weights (safetensors)."""
    from ..io.data import digits

    x, y = digits()
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    tr, te = perm[:1500], perm[1500:]
    torch.manual_seed(seed)
    net = DigitsClassifier()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="classifier")
    for step in it:
        idx = tr[torch.randint(0, len(tr), (128,), generator=g)]
        xb = x[idx] + 0.1 * torch.randn(x[idx].shape, generator=g)
        loss = nn.functional.cross_entropy(net(xb), y[idx])
        for grp in opt.param_groups:
            grp["lr"] = 2e-3 * (1 - step / steps)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        acc = float((net(x[te]).argmax(1) == y[te]).float().mean())
    if out is not None:
        save_tensors(Path(out), net.state_dict(), {"held_out_accuracy": f"{acc:.4f}", "steps": str(steps),
                                                   "seed": str(seed)})
    return net, acc


def load_digits_classifier(path: str | Path | None = None) -> DigitsClassifier:
    """The shipped classifier (or one at `path`)."""
    if path is None:
        from importlib import resources

        path = Path(str(resources.files("ddim") / "assets" / "digits_classifier.safetensors"))
    net = DigitsClassifier()
    load_state_into(net, path)
    return net.eval()

"""A small digits classifier the project trains itself: its 64-d penultimate features give a Fréchet
distance for 8×8 digits, and its predictions give class coverage."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

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


class DigitsJudge:
    """Scores digit samples against all real digits in the shipped classifier's features: Fréchet distance,
    class-balanced FD (each predicted class weighted equally), and class accuracy when labels are asked for."""

    def __init__(self) -> None:
        from ..io.data import digits
        from ..ops import metrics

        self.clf = load_digits_classifier()
        self.x_real, self.y_real = digits()
        self.f_real = metrics.extract(self.clf, self.x_real)
        self.w_real = metrics.class_balanced_weights(self.clf(self.x_real).argmax(1))
        half = len(self.x_real) // 2
        perm = torch.randperm(len(self.x_real), generator=torch.Generator().manual_seed(0))
        a, b = perm[:half], perm[half:]
        #: two disjoint random halves of the real digits: the FD between independent real samples of ~900
        self.split_floor = metrics.frechet_distance_features(self.f_real[a], self.f_real[b])
        self.split_floor_balanced = metrics.frechet_distance_features(self.f_real[a], self.f_real[b],
                                                                      self.w_real[a], self.w_real[b])
        self._floors: dict[int, tuple[float, float]] = {}
        with torch.no_grad():
            right = self.clf(self.x_real).argmax(1) == self.y_real
        held = torch.randperm(len(self.x_real), generator=torch.Generator().manual_seed(0))[1500:]
        #: the classifier's accuracy on real digits: all of them, and the 297 it was not trained on
        self.real_accuracy = (float(right.float().mean()), float(right[held].float().mean()))

    def floor(self, n: int) -> tuple[float, float]:
        """(FD, class-balanced FD) of n digits drawn with replacement from the real set, against the real set:
        what a sampler of the training digits themselves scores at this sample size (the mean of 3 draws). FDs
        here are measured against the training digits, so no model beats this in expectation."""
        from ..ops import metrics

        if n not in self._floors:
            vals = []
            for k in range(3):
                idx = torch.randint(0, len(self.x_real), (n,), generator=torch.Generator().manual_seed(100 + k))
                vals.append((metrics.frechet_distance_features(self.f_real, self.f_real[idx]),
                             metrics.frechet_distance_features(self.f_real, self.f_real[idx], self.w_real,
                                                               metrics.class_balanced_weights(
                                                                   self.clf.head(self.f_real[idx]).argmax(1)))))
            self._floors[n] = (sum(v[0] for v in vals) / 3, sum(v[1] for v in vals) / 3)
        return self._floors[n]

    def floor_text(self, n: int) -> str:
        """One sentence for a report: the floor at n samples and the split-half value."""
        fd, bal = self.floor(n)
        return (f"Floor at {n} samples (real digits drawn with replacement from the real set, against it — the "
                f"training set, so no model beats it in expectation): FD {fd:.2f}, class-balanced {bal:.2f}; two "
                f"disjoint halves of the real digits (≈900 each) differ by FD {self.split_floor:.2f} "
                f"(class-balanced {self.split_floor_balanced:.2f}).")

    @torch.no_grad()
    def score(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
        """fd, fd_bal, coverage TV and (with labels) the fraction classified as the asked class."""
        from ..ops import metrics

        x = x.clamp(-1, 1)
        f = metrics.extract(self.clf, x)
        pred = self.clf.head(f).argmax(1)
        cov = metrics.class_coverage(pred)
        out = {"fd": metrics.frechet_distance_features(self.f_real, f),
               "fd_bal": metrics.frechet_distance_features(self.f_real, f, self.w_real,
                                                           metrics.class_balanced_weights(pred)),
               "tv": cov["tv_to_uniform"], "min_frac": cov["min_fraction"], "n": float(len(x))}
        if labels is not None:
            out["acc"] = float((pred == labels.to(pred.device)).float().mean())
        return out

    def pooled(self, per_seed: list[torch.Tensor], labels: list[torch.Tensor] | None = None) -> dict[str, Any]:
        """Scores of the pooled samples, plus each seed's scores (the spread across seeds)."""
        x = torch.cat(per_seed)
        lab = torch.cat(labels) if labels is not None else None
        out: dict[str, Any] = self.score(x, lab)
        out["seeds"] = [self.score(xs, None if labels is None else ls)
                        for xs, ls in zip(per_seed, labels or [None] * len(per_seed))]
        return out


@functools.cache
def judge() -> DigitsJudge:
    """One shared judge per process (it holds the real digits' features)."""
    return DigitsJudge()

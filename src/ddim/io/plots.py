"""Figures a person would rather look at than read: scatter plots, image grids, curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from ..core.errors import UsageError


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def scatter(panels: Sequence[tuple[str, torch.Tensor]], path: str | Path, lim: float = 4.5,
            reference: torch.Tensor | None = None) -> Path:
    """One scatter panel per (title, points (N, 2)), optional reference points in grey."""
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.3), squeeze=False)
    for ax, (title, pts) in zip(axes[0], panels):
        if reference is not None:
            r = reference.detach().cpu().numpy()
            ax.scatter(r[:, 0], r[:, 1], s=3, c="0.75", label="data")
        p = pts.detach().cpu().float().numpy()
        ax.scatter(p[:, 0], p[:, 1], s=3, c="tab:blue", alpha=0.7)
        ax.set_title(title, fontsize=9)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path)


def images_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] → uint8 pixels of the same shape."""
    return ((images.detach().cpu().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def image_grid_array(images: torch.Tensor, nrow: int | None = None) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] → one (rows·H, cols·W[, 3]) uint8 array with 1-pixel gaps."""
    x = images_uint8(images)
    n, c, h, w = x.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol = int(np.ceil(n / nrow))
    grid = np.zeros((ncol * (h + 1) + 1, nrow * (w + 1) + 1, c), dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + k * (w + 1): 1 + k * (w + 1) + w] = x[i].transpose(1, 2, 0)
    return grid[..., 0] if c == 1 else grid


def image_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, title: str | None = None,
               scale: float = 0.35) -> Path:
    grid = image_grid_array(images, nrow)
    fig = plt.figure(figsize=(max(grid.shape[1] * scale / 8, 2), max(grid.shape[0] * scale / 8, 2)))
    ax = fig.add_axes([0, 0, 1, 0.92 if title else 1])
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, interpolation="nearest", vmin=0, vmax=255)
    ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def curves(series: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, xlabel: str,
           ylabel: str, logx: bool = False, logy: bool = False, title: str | None = None,
           hline: float | None = None, hline_label: str = "floor") -> Path:
    """Line plots, one per series; `hline` draws a dashed reference level (e.g. a real-vs-real floor)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", ms=3, label=label)
    if hline is not None:
        ax.axhline(hline, color="k", ls="--", lw=1, label=hline_label)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=7)
    return _save(fig, path)


def save_samples_figure(x: torch.Tensor, path: str | Path, title: str) -> Path:
    """A scatter for 2-D points, an image grid for images."""
    if x.ndim == 2 and x.shape[1] == 2:
        return scatter([(title, x)], path)
    if x.ndim == 4:
        return image_grid(x[:256], path, title=title)
    raise UsageError(f"no picture for samples of shape {tuple(x.shape)}")


def save_pairs_figure(x: torch.Tensor, y: torch.Tensor, path: str | Path, title: str) -> Path:
    """Originals beside their reconstructions: a two-panel scatter (2-D) or a two-row image grid."""
    if x.ndim == 2 and x.shape[1] == 2:
        return scatter([("original", x), ("reconstruction", y)], path)
    n = min(x.shape[0], 16)
    return image_grid(torch.cat([x[:n], y[:n]]), path, nrow=n, title=title + " (top: original)")


def save_strip(xs: torch.Tensor, path: str | Path, title: str) -> Path:
    """An interpolation path: one row of images, or the path drawn over a scatter for 2-D points."""
    if xs.ndim == 2 and xs.shape[1] == 2:
        fig, ax = plt.subplots(figsize=(4, 4))
        p = xs.detach().cpu().numpy()
        ax.plot(p[:, 0], p[:, 1], "-o", ms=3)
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
        return _save(fig, path)
    return image_grid(xs, path, nrow=xs.shape[0], title=title, scale=0.6)


def save_animation(xs: torch.Tensor, path: str | Path, ms_per_frame: int = 120) -> Path:
    """An animated GIF going along the path and back (images only; 2-D paths get a scatter per frame)."""
    from PIL import Image

    path = Path(path)
    frames = []
    if xs.ndim == 4:
        for i in range(xs.shape[0]):
            arr = image_grid_array(xs[i: i + 1], 1)
            im = Image.fromarray(arr)
            frames.append(im.resize((im.width * 12, im.height * 12), Image.NEAREST))
    else:
        pts = xs.detach().cpu().numpy()
        for i in range(len(pts)):
            fig, ax = plt.subplots(figsize=(3, 3))
            ax.plot(pts[:, 0], pts[:, 1], "-", c="0.7")
            ax.plot(pts[i, 0], pts[i, 1], "o", c="tab:red")
            ax.set_aspect("equal")
            fig.canvas.draw()
            frames.append(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3]))
            plt.close(fig)
    seq = frames + frames[-2:0:-1]
    tmp = path.with_name(path.name + ".tmp.gif")
    seq[0].save(tmp, save_all=True, append_images=seq[1:], duration=ms_per_frame, loop=0)
    tmp.replace(path)
    return path


def save_edit_grid(outs: torch.Tensor, columns: Sequence[float | str], path: str | Path) -> Path:
    """(len(columns), N, ...) → rows are samples, columns are edit scales (numbers) or named stages."""
    k, n = outs.shape[:2]
    names = [f"scale {c:+g}" if isinstance(c, int | float) else str(c) for c in columns]
    if outs.ndim == 3 and outs.shape[2] == 2:
        return scatter([(name, outs[i]) for i, name in enumerate(names)], path)
    grid = outs.transpose(0, 1).reshape(k * n, *outs.shape[2:])
    return image_grid(grid, path, nrow=k, title="columns: " + " | ".join(names), scale=0.6)

"""Resolve a model spec (`mixture:mog3`, a run folder, a diffusers folder, `digits`) to a ready Denoiser."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..core.errors import UsageError
from ..core.prediction import Denoiser
from ..core.schedule import NoiseSchedule

BUILTIN_MODELS = ("digits", "digits-cond", "digits-flow", "digits-distilled")
#: scheduler classes whose models sample with a consistency sampler by default
CONSISTENCY_SCHEDULERS = {"LCMScheduler": "lcm", "TCDScheduler": "tcd"}


@dataclass
class LoadedModel:
    denoiser: Denoiser
    sample_shape: tuple[int, ...]
    name: str
    info: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> LoadedModel:
        """Move the network (when it has parameters) to `device` (and cast it: a latent pipeline's networks)."""
        if "pipeline" in self.info:
            self.info["pipeline"].to(device, dtype)
        elif isinstance(self.denoiser.net, torch.nn.Module):
            self.denoiser.net.to(device)
        return self

    def sampling_defaults(self, nfe: int) -> dict[str, Any]:
        """The measured best sampler and spacing for a budget of `nfe` network evaluations (the model folder's
        sampling.json, from `ddim bench flow`): the winner at the largest measured NFE within the budget, run
        with as many steps as the budget allows; {} when the model has none."""
        table = self.info.get("sampling", {}).get("nfe", {})
        fits = [int(k) for k in table if int(k) <= nfe]
        if not fits:
            return {}
        best = dict(table[str(max(fits))])
        from ..core.samplers import get_sampler

        best["steps"] = get_sampler(best["sampler"]).steps_for_nfe(nfe)
        return best

    def resolve_sampling(self, steps: int, sampler: str | None = None, spacing: str | None = None
                         ) -> tuple[str, str | None, int]:
        """(sampler, spacing, steps) for a run: as given, or — with no sampler named — the model's measured best
        within a budget of `steps` network evaluations (ddim with `steps` steps when it has no table)."""
        if "distilled" in self.info:
            return self._distilled_student(steps, sampler, spacing)
        if sampler is not None:
            return sampler, spacing, steps
        best = self.sampling_defaults(steps)
        if not best:
            consistency = CONSISTENCY_SCHEDULERS.get(self.info.get("scheduler_class"))
            if consistency is not None:  # a model shipped with LCM/TCD scheduling samples that way
                return consistency, spacing or "lcm", steps
            return "ddim", spacing, steps
        return best["sampler"], spacing or best.get("spacing"), int(best.get("steps", steps))

    def _distilled_student(self, steps: int, sampler: str | None, spacing: str | None
                           ) -> tuple[str, str | None, int]:
        """Load the student distilled for `steps` into the network; other step counts are refused."""
        d = self.info["distilled"]
        table = d.get("steps", {})
        if str(steps) not in table:
            have = ", ".join(sorted(table, key=int))
            raise UsageError(f"{self.name} was distilled for {have} steps, not {steps}: use --steps {have}")
        from .checkpoint import load_state_into

        load_state_into(self.denoiser.net, Path(self.info["folder"]) / table[str(steps)] /
                        "diffusion_pytorch_model.safetensors")
        return sampler or d.get("sampler", "ddim"), spacing or d.get("spacing"), steps

    def optimised(self, sampler: str | None, steps: int | None) -> tuple[str, torch.Tensor]:
        """(sampler, timesteps) of the model's stored schedule.json (`--spacing optimised`)."""
        from .schedule_file import FILE, read_schedule

        folder = self.info.get("folder")
        if folder is None:
            raise UsageError(f"{self.name} has no folder to hold a {FILE}")
        return read_schedule(Path(folder) / FILE, self.denoiser, sampler, steps)

    def exact_log_likelihood(self, x: torch.Tensor, bits_per_dim: bool = False) -> torch.Tensor | None:
        """The true log-density of x at the model's lowest level, for exact mixtures; None for trained models."""
        mix = self.info.get("mixture")
        if mix is None:
            return None
        a = self.denoiser.schedule.alpha_sigma(self.denoiser.schedule.t_range[0])[0] ** 2
        ll = mix.log_prob(x.double(), a)
        return -ll / (x[0].numel() * math.log(2)) if bits_per_dim else ll


def builtin_path(name: str) -> Path:
    """Folder of a model shipped inside the package (diffusers layout)."""
    return Path(str(resources.files("ddim") / "assets" / name))


def load_model(spec: str | Path) -> LoadedModel:
    """A model by name or folder, with its Denoiser, sample shape and provenance."""
    spec = str(spec)
    if spec.startswith("mixture:"):
        from .data import mixture

        name = spec.split(":", 1)[1]
        mix = mixture(name)
        sched = NoiseSchedule.linear(1000)
        den = Denoiser(mix.eps_model(sched), sched, sample_shape=(mix.dim,))
        return LoadedModel(den, (mix.dim,), spec, {"mixture": mix})
    path = builtin_path(spec) if spec in BUILTIN_MODELS else Path(spec)
    if (path / "config.json").is_file() and (path / "latest").is_file():
        from .runs import load_run_denoiser

        den, cfg = load_run_denoiser(path)
        return LoadedModel(den, den.sample_shape, spec, {"config": cfg, "folder": str(path)})
    from .text2image import is_text_to_image_folder

    if is_text_to_image_folder(path):
        from .text2image import LatentDiffusion

        pipe = LatentDiffusion(path)
        return LoadedModel(pipe.denoiser, pipe.latent_shape, spec, {"pipeline": pipe})
    if (path / "unet").is_dir() or (path / "model_index.json").is_file() or (path / "scheduler").is_dir():
        from .checkpoint import read_json
        from .interop import load

        den = load(path)
        info: dict[str, Any] = {"folder": str(path)}
        if (path / "sampling.json").is_file():
            info["sampling"] = read_json(path / "sampling.json")
        if (path / "distilled.json").is_file():
            info["distilled"] = read_json(path / "distilled.json")
        sched_file = path / "scheduler" / "scheduler_config.json"
        if sched_file.is_file():
            info["scheduler_class"] = read_json(sched_file).get("_class_name")
        return LoadedModel(den, den.sample_shape or (), spec, info)
    if not path.exists():
        raise UsageError(f"unknown model {spec!r}: use mixture:mog3, digits, a run folder or a diffusers folder")
    raise UsageError(f"{path} is neither a ddim run folder (config.json + latest) nor a diffusers model folder")

"""Stable-Diffusion 1.x/2.x folders: UNet2DConditionModel + AutoencoderKL + CLIP text encoder and tokenizer +
scheduler config, loaded from local files only (safetensors), as a latent Model with prompt conditioning.

The Denoiser works on latents (C, H/f, W/f); prompts become `encoder_hidden_states` (computed once per
distinct prompt and cached); images are encoded and decoded with the folder's VAE and its scaling factor.
Needs `transformers` (the `text` extra).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...core.errors import CheckpointError, UsageError
from ...models.contract import Model, SamplingDefaults
from ..checkpoint import read_json
from ..networks import load_diffusers, load_text_encoder, require_transformers
from ._folder import network_denoiser

NAME = "sd"
PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def detect(spec: str, path: Path | None) -> bool:
    """A folder whose model_index.json names one text encoder (a Stable-Diffusion 1/2 pipeline)."""
    f = None if path is None else path / "model_index.json"
    if f is None or not f.is_file():
        return False
    try:
        index = read_json(f)
    except (UsageError, CheckpointError):
        return False
    return "text_encoder" in index and "text_encoder_2" not in index


@dataclass(frozen=True, eq=False)
class PromptConditioning:
    """A prompt-conditioned network: the condition is `encoder_hidden_states`; the unconditional branch is
    the empty prompt's embedding (what StableDiffusionPipeline uses without a negative prompt)."""

    null_embedding: torch.Tensor
    key: str = "encoder_hidden_states"

    def condition(self, labels: Any) -> dict[str, torch.Tensor]:
        raise UsageError("this model takes prompts (--prompt), not class labels")

    def unconditional(self) -> dict[str, torch.Tensor]:
        return {self.key: self.null_embedding}


class LatentDiffusion:
    """The parts of a Stable-Diffusion folder and the maths between images, latents and prompts; built once on
    a device and dtype (the only state that changes afterwards is the prompt-embedding memo)."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
                 ) -> None:
        path = Path(path)
        transformers = require_transformers()
        index = read_json(path / "model_index.json")
        for part in PARTS:
            if part not in index or not (path / part).is_dir():
                raise UsageError(f"{path} is missing its {part}/ part (a Stable-Diffusion folder has "
                                 f"{', '.join(PARTS)})")
        dtype = None if dtype == torch.float32 else dtype
        self.path = path
        self.unet = load_diffusers(path / "unet", ("UNet2DConditionModel",), device, dtype)
        self.vae = load_diffusers(path / "vae", ("AutoencoderKL",), device, dtype)
        self.text_encoder = load_text_encoder(path / "text_encoder", ("CLIPTextModel",), device, dtype)
        try:
            self.tokenizer = transformers.CLIPTokenizer.from_pretrained(str(path / "tokenizer"), local_files_only=True)
        except (OSError, ValueError, TypeError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UsageError(f"{path / 'tokenizer'} is not a readable CLIP tokenizer: {msg}") from None
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        size = self.unet.config.sample_size
        size = size if isinstance(size, int) else size[0]
        self.latent_shape = (int(self.unet.config.in_channels), size, size)
        self._cache: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()
        null = PromptConditioning(self.encode_prompts([""])[0:1])
        self.denoiser = network_denoiser(path, self.unet, self.latent_shape, null, dtype)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (int(self.vae.config.in_channels), self.latent_shape[1] * self.vae_scale,
                self.latent_shape[2] * self.vae_scale)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """(len(prompts), L, D) text embeddings; each distinct prompt is encoded once, alone (cached)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        with self._lock:
            dev = next(self.text_encoder.parameters()).device
            for p in dict.fromkeys(prompts):  # one prompt per call: its embedding never depends on the others
                if p not in self._cache:
                    ids = self.tokenizer([p], padding="max_length", max_length=self.tokenizer.model_max_length,
                                         truncation=True, return_tensors="pt").input_ids
                    self._cache[p] = self.text_encoder(ids.to(dev))[0][0]
            return torch.stack([self._cache[p] for p in prompts])

    def condition(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The network's keyword arguments for per-sample prompts (one prompt: one row, broadcast)."""
        return {"encoder_hidden_states": self.encode_prompts(prompts)}

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → images in [-1, 1] with the VAE (latents divided by the scaling factor first)."""
        p = next(self.vae.parameters())
        out = self.vae.decode(latents.to(p.device, p.dtype) / self.scaling_factor).sample
        return out.float().clamp(-1, 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] → latents: the VAE posterior mean times the scaling factor (deterministic)."""
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise UsageError(f"images must have shape (N, {', '.join(map(str, self.image_shape))}), "
                             f"got {tuple(images.shape)}")
        p = next(self.vae.parameters())
        dist = self.vae.encode(images.to(p.device, p.dtype)).latent_dist
        return (dist.mean * self.scaling_factor).float()


def load(spec: str, path: Path, device: torch.device, dtype: torch.dtype | None) -> Model:
    pipe = LatentDiffusion(path, device, dtype)
    return Model(spec, NAME, pipe.denoiser, pipe.latent_shape, condition_kind="prompt", codec=pipe, encoder=pipe,
                 defaults=SamplingDefaults(guidance=7.5), folder=path)

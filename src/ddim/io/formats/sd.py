"""Stable-Diffusion 1.x/2.x folders: UNet2DConditionModel + AutoencoderKL + CLIP text encoder and tokenizer +
scheduler config, loaded from local files only (safetensors), as a latent Model with prompt conditioning.

The Denoiser works on latents (C, H/f, W/f); prompts become `encoder_hidden_states` (computed once per
distinct prompt and cached); images are encoded and decoded with the folder's VAE and its scaling factor.
Needs `transformers` (the `text` extra).
"""

from __future__ import annotations

import copy
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


def pipeline_class_is(path: Path | None, name: str) -> bool:
    """Whether `path` holds a model_index.json naming the diffusers pipeline class `name`."""
    f = None if path is None else path / "model_index.json"
    if f is None or not f.is_file():
        return False
    try:
        return read_json(f).get("_class_name") == name
    except (UsageError, CheckpointError):
        return False


@dataclass(frozen=True, eq=False)
class PromptConditioning:
    """A prompt-conditioned network: the condition is the network keyword arguments of a prompt; the
    unconditional branch is `null` (the empty prompt's, or zeros where the pipeline zeroes it)."""

    null: dict[str, torch.Tensor]

    def condition(self, labels: Any) -> dict[str, torch.Tensor]:
        raise UsageError("this model takes prompts (--prompt), not class labels")

    def unconditional(self) -> dict[str, torch.Tensor]:
        return self.null


def load_tokenizer(folder: Path, cls: str = "CLIPTokenizer") -> Any:
    """A transformers tokenizer saved in `folder`, local files only."""
    transformers = require_transformers()
    try:
        return getattr(transformers, cls).from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"{folder} is not a readable {cls}: {msg}") from None


class LatentDiffusion:
    """The parts of a Stable-Diffusion folder and the maths between images, latents and prompts; built once on
    a device and dtype (the only state that changes afterwards is the prompt-embedding memo). Formats with
    other encoders or networks (SDXL) override `PARTS`, `load_networks`, `encode_one` and `null_condition`."""

    PARTS: tuple[str, ...] = PARTS
    LAYOUT = "a Stable-Diffusion folder"

    def __init__(self, path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
                 ) -> None:
        path = Path(path)
        require_transformers()
        index = read_json(path / "model_index.json")
        for part in self.PARTS:
            if part not in index or not (path / part).is_dir():
                raise UsageError(f"{path} is missing its {part}/ part ({self.LAYOUT} has {', '.join(self.PARTS)})")
        dtype = None if dtype == torch.float32 else dtype
        self.path, self.index = path, index
        self.vae = load_diffusers(path / "vae", ("AutoencoderKL",), device, dtype)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.net = self.load_networks(path, device, dtype)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.shift_factor = float(getattr(self.vae.config, "shift_factor", None) or 0.0)  # SD3, Flux
        self.latent_shape = self.default_latent_shape()
        self._cache: dict[str, dict[str, torch.Tensor]] = {}
        self._cut: dict[str, tuple[str, ...]] = {}  # what encoding each prompt truncated
        self._notes: list[str] = []
        self._lock = threading.Lock()
        self.denoiser = self.make_denoiser(path, PromptConditioning(self.null_condition()), dtype)

    def load_networks(self, path: Path, device: torch.device | str, dtype: torch.dtype | None) -> torch.nn.Module:
        """The denoising network (what the Denoiser calls) and the text encoders and tokenizers."""
        self.unet = load_diffusers(path / "unet", ("UNet2DConditionModel",), device, dtype)
        self.text_encoder = load_text_encoder(path / "text_encoder", ("CLIPTextModel",), device, dtype)
        self.tokenizer = load_tokenizer(path / "tokenizer")
        return self.unet

    def make_denoiser(self, path: Path, conditioning: Any, dtype: torch.dtype | None) -> Any:
        """The Denoiser of the network and the folder's scheduler config."""
        return network_denoiser(path, self.net, self.latent_shape, conditioning, dtype)

    def default_latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the latents the pipeline makes when no size is given (the UNet's sample size)."""
        size = self.unet.config.sample_size
        size = size if isinstance(size, int) else size[0]
        return (int(self.unet.config.in_channels), size, size)

    def encode_one(self, prompt: str) -> dict[str, torch.Tensor]:
        """One prompt's network keyword arguments (unbatched): the CLIP last hidden state."""
        return {"encoder_hidden_states": self.text_encoder(self.token_ids(self.tokenizer, prompt))[0][0]}

    def token_ids(self, tokenizer: Any, prompt: str, max_length: int | None = None, encoder: Any = None
                  ) -> torch.Tensor:
        """(1, L) token ids padded to the encoder's length, on its device; a prompt longer than that is truncated
        with a warning naming what was cut (as diffusers warns), recorded for `truncations`."""
        import warnings

        enc = encoder if encoder is not None else self.text_encoder
        max_length = max_length or tokenizer.model_max_length
        ids = tokenizer([prompt], padding="max_length", max_length=max_length, truncation=True,
                        return_tensors="pt").input_ids
        full = tokenizer([prompt], padding="longest", return_tensors="pt").input_ids
        if full.shape[-1] > ids.shape[-1]:
            cut = tokenizer.batch_decode(full[:, max_length - 1:-1])[0]
            note = f"prompt truncated to {max_length} tokens for {type(enc).__name__}; dropped: {cut!r}"
            self._notes.append(note)
            warnings.warn(note, stacklevel=3)
        return ids.to(next(enc.parameters()).device)

    def null_condition(self) -> dict[str, torch.Tensor]:
        """The unconditional branch: the empty prompt (StableDiffusionPipeline without a negative prompt)."""
        return self.condition([""])

    def resized(self, latent_shape: Sequence[int]) -> LatentDiffusion:
        """The same parts at another latent size (encoders and prompt memo shared), its denoiser resized so a
        dynamic flow shift follows the size."""
        if tuple(latent_shape) == tuple(self.latent_shape):
            return self
        out = copy.copy(self)
        out.latent_shape = tuple(int(v) for v in latent_shape)
        out.denoiser = self.denoiser.replace(sample_shape=out.latent_shape)
        return out

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (int(self.vae.config.in_channels), self.latent_shape[1] * self.vae_scale,
                self.latent_shape[2] * self.vae_scale)

    @torch.no_grad()
    def condition(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """The network's keyword arguments for per-sample prompts, batch first; each distinct prompt is encoded
        once, alone (cached), so its embedding never depends on the others."""
        if isinstance(prompts, str):
            prompts = [prompts]
        with self._lock:
            for p in dict.fromkeys(prompts):
                if p not in self._cache:
                    self._notes = []
                    self._cache[p] = self.encode_one(p)
                    self._cut[p] = tuple(self._notes)
            rows = [self._cache[p] for p in prompts]
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    def truncations(self, prompt: str) -> tuple[str, ...]:
        """What each text encoder drops of `prompt` (empty when it fits them all); encodes it once if needed."""
        self.condition([prompt])
        return self._cut[prompt]

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """(len(prompts), L, D) text embeddings (`encoder_hidden_states`)."""
        return self.condition(prompts)["encoder_hidden_states"]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → images in [-1, 1] with the VAE (latents divided by the scaling factor, plus the shift factor)."""
        p = next(self.vae.parameters())
        out = self.vae.decode(latents.to(p.device, p.dtype) / self.scaling_factor + self.shift_factor).sample
        return out.float().clamp(-1, 1)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] → latents: (VAE posterior mean − shift factor) × scaling factor (deterministic)."""
        c, f = self.image_shape[0], self.vae_scale
        if images.ndim != 4 or images.shape[1] != c or images.shape[2] % f or images.shape[3] % f:
            raise UsageError(f"images must have shape (N, {c}, H, W) with H and W multiples of {f}, "
                             f"got {tuple(images.shape)}")
        p = next(self.vae.parameters())
        dist = self.vae.encode(images.to(p.device, p.dtype)).latent_dist
        return ((dist.mean - self.shift_factor) * self.scaling_factor).float()


def load(spec: str, path: Path, device: torch.device, dtype: torch.dtype | None) -> Model:
    return prompt_model(spec, NAME, LatentDiffusion(path, device, dtype), path, guidance=7.5)


def prompt_model(spec: str, fmt: str, pipe: LatentDiffusion, path: Path, guidance: float, patch: int = 1,
                 **defaults: Any) -> Model:
    """The latent, prompt-conditioned Model of a text-to-image folder."""
    return Model(spec, fmt, pipe.denoiser, pipe.latent_shape, condition_kind="prompt", codec=pipe, encoder=pipe,
                 defaults=SamplingDefaults(guidance=guidance, **defaults), folder=path, patch=patch)

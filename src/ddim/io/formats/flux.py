"""Flux folders: FluxTransformer2DModel (a DiT on 2×2-packed latents with rotary image/text ids) + a 16-channel
AutoencoderKL with shift and scaling factors + CLIP (pooled) and T5 encoders + a FlowMatchEulerDiscreteScheduler
config with dynamic shifting, loaded from local files only, as a latent flow Model with prompt conditioning.

As FluxPipeline: the denoiser works on unpacked latents (C, H/8, W/8) — the noise a seed draws is the
pipeline's before it packs it — and the network packs, calls the transformer at σ (timestep/1000) with the image
ids of the size, and unpacks; σ before shifting is linspace(1, 1/n, n), shifted by μ from the token count of
the size. Models with `guidance_embeds` (Flux-dev) take the distilled guidance scale as an input (default 3.5);
classifier-free guidance is diffusers' `true_cfg_scale` (default 1: none), against the negative prompt, or the
empty prompt when none is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...models.contract import Model
from ..config import flow_path_from_config
from ..networks import load_diffusers, load_text_encoder
from ._folder import scheduler_file
from .sd import LatentDiffusion, load_tokenizer, pipeline_class_is, prompt_model

NAME = "flux"
PARTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
T5_LENGTH = 512  # the pipeline's max_sequence_length default
DEFAULT_SAMPLE_SIZE = 128  # FluxPipeline's default latent size (1024 px with an 8× VAE)
DISTILLED_GUIDANCE = 3.5  # FluxPipeline's guidance_scale default


def detect(spec: str, path: Path | None) -> bool:
    """A folder whose model_index.json names a FluxPipeline."""
    return pipeline_class_is(path, "FluxPipeline")


def pack(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latents → (B, h/2 · w/2, 4C) tokens of 2×2 patches (FluxPipeline._pack_latents)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of `pack` for latents of height h and width w."""
    b, _, d = tokens.shape
    return tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


class PackedTransformer(nn.Module):
    """The Flux DiT called as `net(x, t, encoder_hidden_states=, pooled_projections=[, guidance=])` on unpacked
    latents (t: σ·1000 from the denoiser, σ to the transformer, as the pipeline passes it)."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer
        self._ids: dict[tuple[Any, ...], torch.Tensor] = {}  # image/text ids per (size, length, device, dtype)

    def ids(self, kind: str, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (kind, shape, device, dtype)
        out = self._ids.get(key)
        if out is None:
            if len(self._ids) > 32:
                self._ids.clear()
            if kind == "img":  # (row, column) of each 2×2 patch in channels 1, 2
                h, w = shape
                grid = torch.zeros(h, w, 3)
                grid[..., 1] += torch.arange(h)[:, None]
                grid[..., 2] += torch.arange(w)[None, :]
                out = grid.reshape(h * w, 3)
            else:
                out = torch.zeros(shape[0], 3)
            out = self._ids[key] = out.to(device, dtype)
        return out

    def forward(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor,
                pooled_projections: torch.Tensor, guidance: torch.Tensor | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        dt = encoder_hidden_states.dtype
        out = self.transformer(hidden_states=pack(x), timestep=t.to(x.dtype) / 1000, guidance=guidance,
                               pooled_projections=pooled_projections, encoder_hidden_states=encoder_hidden_states,
                               txt_ids=self.ids("txt", (encoder_hidden_states.shape[1],), x.device, dt),
                               img_ids=self.ids("img", (h // 2, w // 2), x.device, dt), return_dict=False)[0]
        return unpack(out, h, w)


class FluxDiffusion(LatentDiffusion):
    """A Flux folder's parts: CLIP for the pooled embedding, T5 for the token states."""

    PARTS = PARTS
    LAYOUT = "a Flux folder"

    def load_networks(self, path: Path, device: torch.device | str, dtype: torch.dtype | None) -> nn.Module:
        self.transformer = load_diffusers(path / "transformer", ("FluxTransformer2DModel",), device, dtype)
        self.text_encoder = load_text_encoder(path / "text_encoder", ("CLIPTextModel",), device, dtype)
        self.text_encoder_2 = load_text_encoder(path / "text_encoder_2", ("T5EncoderModel",), device, dtype)
        self.tokenizer = load_tokenizer(path / "tokenizer")
        self.tokenizer_2 = load_tokenizer(path / "tokenizer_2", "T5TokenizerFast")
        self.distilled = bool(self.transformer.config.guidance_embeds)
        return PackedTransformer(self.transformer)

    def default_latent_shape(self) -> tuple[int, int, int]:
        return (int(self.transformer.config.in_channels) // 4, DEFAULT_SAMPLE_SIZE, DEFAULT_SAMPLE_SIZE)

    def make_denoiser(self, path: Path, conditioning: Any, dtype: torch.dtype | None) -> Any:
        from ...core.prediction import Denoiser
        from ..checkpoint import read_json

        f = scheduler_file(path)
        flow = flow_path_from_config(read_json(f), str(f), self.latent_shape, grid="pipeline")
        return Denoiser(self.net, flow, prediction_type="flow_prediction", sample_shape=self.latent_shape,
                        conditioning=conditioning, net_dtype=dtype)

    def encode_one(self, prompt: str) -> dict[str, torch.Tensor]:
        clip = self.text_encoder(self.token_ids(self.tokenizer, prompt), output_hidden_states=False)
        t5 = self.text_encoder_2(self.token_ids(self.tokenizer_2, prompt, T5_LENGTH, self.text_encoder_2))[0][0]
        out = {"encoder_hidden_states": t5, "pooled_projections": clip.pooler_output[0].to(t5.dtype)}
        if self.distilled:  # the distilled guidance scale is a network input (replaced per request)
            out["guidance"] = torch.tensor(DISTILLED_GUIDANCE, dtype=torch.float32, device=t5.device)
        return out


def load(spec: str, path: Path, device: torch.device, dtype: torch.dtype | None) -> Model:
    pipe = FluxDiffusion(path, device, dtype)
    return prompt_model(spec, NAME, pipe, path, guidance=1.0, patch=2,
                        distilled_guidance=DISTILLED_GUIDANCE if pipe.distilled else None)

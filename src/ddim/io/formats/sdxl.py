"""Stable Diffusion XL folders: UNet2DConditionModel with `text_time` added conditioning, two CLIP encoders
(`text_encoder`: CLIPTextModel, `text_encoder_2`: CLIPTextModelWithProjection) and their tokenizers, the VAE
and the scheduler config, loaded from local files only, as a latent Model with prompt conditioning.

As StableDiffusionXLPipeline: the prompt embedding is both encoders' penultimate hidden states side by side,
the pooled embedding is the second encoder's projection, the size/crop conditioning `time_ids` is
(H, W, 0, 0, H, W) of the image being made (original = target size, no crop), and with
`force_zeros_for_empty_prompt` the unconditional branch is zeros rather than the empty prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...core.errors import UsageError
from ...models.contract import Model
from ..networks import load_diffusers, load_text_encoder
from .sd import LatentDiffusion, load_tokenizer, pipeline_class_is, prompt_model

NAME = "sdxl"
PARTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


def detect(spec: str, path: Path | None) -> bool:
    """A folder whose model_index.json names a StableDiffusionXLPipeline."""
    return pipeline_class_is(path, "StableDiffusionXLPipeline")


class SizeConditionedUNet(nn.Module):
    """The SDXL UNet called as `net(x, t, encoder_hidden_states=, text_embeds=)`: `time_ids` (original size,
    crop top-left, target size) come from the latent's own size, so every keyword argument is a batch-first
    tensor (what guidance, batching and chunking handle)."""

    def __init__(self, unet: nn.Module, vae_scale: int) -> None:
        super().__init__()
        self.unet, self.vae_scale = unet, vae_scale
        self._ids: dict[tuple[Any, ...], torch.Tensor] = {}  # memo per (batch, size, device, dtype)

    def time_ids(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        key = (x.shape, x.device, dtype)
        ids = self._ids.get(key)
        if ids is None:
            if len(self._ids) > 16:
                self._ids.clear()
            h, w = x.shape[-2] * self.vae_scale, x.shape[-1] * self.vae_scale
            ids = self._ids[key] = torch.tensor([[h, w, 0, 0, h, w]], dtype=dtype, device=x.device).expand(
                x.shape[0], 6)
        return ids

    def forward(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor,
                text_embeds: torch.Tensor) -> Any:
        added = {"text_embeds": text_embeds, "time_ids": self.time_ids(x, text_embeds.dtype)}
        return self.unet(x, t, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added)


class SDXLDiffusion(LatentDiffusion):
    """An SDXL folder's parts: both encoders, the size-conditioned UNet, zeros as the unconditional branch
    when the folder says `force_zeros_for_empty_prompt` (diffusers' default)."""

    PARTS = PARTS
    LAYOUT = "an SDXL folder"

    def load_networks(self, path: Path, device: torch.device | str, dtype: torch.dtype | None) -> nn.Module:
        self.unet = load_diffusers(path / "unet", ("UNet2DConditionModel",), device, dtype)
        if self.unet.config.addition_embed_type != "text_time":
            raise UsageError(f"{path / 'unet'}: an SDXL UNet has addition_embed_type 'text_time', found "
                             f"{self.unet.config.addition_embed_type!r}")
        self.text_encoder = load_text_encoder(path / "text_encoder", ("CLIPTextModel",), device, dtype)
        self.text_encoder_2 = load_text_encoder(path / "text_encoder_2", ("CLIPTextModelWithProjection",), device,
                                                dtype)
        self.tokenizer = load_tokenizer(path / "tokenizer")
        self.tokenizer_2 = load_tokenizer(path / "tokenizer_2")
        self.force_zeros = bool(self.index.get("force_zeros_for_empty_prompt", True))
        return SizeConditionedUNet(self.unet, self.vae_scale)

    def encode_one(self, prompt: str) -> dict[str, torch.Tensor]:
        hidden, pooled = [], None
        for tok, enc in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            out = enc(self.token_ids(tok, prompt, encoder=enc), output_hidden_states=True)
            hidden.append(out.hidden_states[-2][0])
            if out[0].ndim == 2:
                pooled = out[0][0]
        return {"encoder_hidden_states": torch.cat(hidden, dim=-1), "text_embeds": pooled}

    def null_condition(self) -> dict[str, torch.Tensor]:
        """Zeros where the pipeline zeroes the negative embedding (no negative prompt), else the empty prompt."""
        empty = self.condition([""])
        return {k: torch.zeros_like(v) for k, v in empty.items()} if self.force_zeros else empty


def load(spec: str, path: Path, device: torch.device, dtype: torch.dtype | None) -> Model:
    return prompt_model(spec, NAME, SDXLDiffusion(path, device, dtype), path, guidance=5.0)

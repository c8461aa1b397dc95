"""Stable Diffusion 3 folders: SD3Transformer2DModel (MMDiT) + a 16-channel AutoencoderKL with shift and scaling
factors + CLIP-L, CLIP-G and (optionally) T5 encoders + a FlowMatchEulerDiscreteScheduler config with its
shift, loaded from local files only, as a latent flow Model with prompt conditioning.

As StableDiffusion3Pipeline: both CLIP encoders' penultimate hidden states side by side, zero-padded to the T5
width and followed by the T5 states (zeros when the folder has no T5, as diffusers allows); the pooled
embedding is both CLIP projections concatenated; the unconditional branch is the empty prompt.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ...core.errors import UsageError
from ...models.contract import Model
from ..networks import load_diffusers, load_text_encoder
from .sd import LatentDiffusion, load_tokenizer, pipeline_class_is, prompt_model

NAME = "sd3"
PARTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
T5_LENGTH = 256  # the pipeline's max_sequence_length default


def detect(spec: str, path: Path | None) -> bool:
    """A folder whose model_index.json names a StableDiffusion3Pipeline."""
    return pipeline_class_is(path, "StableDiffusion3Pipeline")


class JointTransformer(nn.Module):
    """The MMDiT called as `net(x, t, encoder_hidden_states=, pooled_projections=)` (t: σ·1000, as the
    pipeline passes it)."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor,
                pooled_projections: torch.Tensor) -> torch.Tensor:
        return self.transformer(hidden_states=x, timestep=t, encoder_hidden_states=encoder_hidden_states,
                                pooled_projections=pooled_projections, return_dict=False)[0]


class SD3Diffusion(LatentDiffusion):
    """An SD3 folder's parts; `text_encoder_3`/`tokenizer_3` (T5) are used when the folder has them."""

    PARTS = PARTS
    LAYOUT = "an SD3 folder"

    def load_networks(self, path: Path, device: torch.device | str, dtype: torch.dtype | None) -> nn.Module:
        self.transformer = load_diffusers(path / "transformer", ("SD3Transformer2DModel",), device, dtype)
        self.text_encoder = load_text_encoder(path / "text_encoder", ("CLIPTextModelWithProjection",), device, dtype)
        self.text_encoder_2 = load_text_encoder(path / "text_encoder_2", ("CLIPTextModelWithProjection",), device,
                                                dtype)
        self.tokenizer = load_tokenizer(path / "tokenizer")
        self.tokenizer_2 = load_tokenizer(path / "tokenizer_2")
        self.text_encoder_3 = self.tokenizer_3 = None
        has_t5 = [p for p in ("text_encoder_3", "tokenizer_3") if self.index.get(p, [None])[0] is not None]
        if len(has_t5) == 1:
            raise UsageError(f"{path} has {has_t5[0]} but not its pair: give both text_encoder_3 and tokenizer_3, "
                             "or neither (no T5)")
        if has_t5:
            for p in has_t5:
                if not (path / p).is_dir():
                    raise UsageError(f"{path} is missing its {p}/ part (model_index.json names it)")
            self.text_encoder_3 = load_text_encoder(path / "text_encoder_3", ("T5EncoderModel",), device, dtype)
            self.tokenizer_3 = load_tokenizer(path / "tokenizer_3", "T5TokenizerFast")
        self.patch = int(self.transformer.config.patch_size)
        return JointTransformer(self.transformer)

    def default_latent_shape(self) -> tuple[int, int, int]:
        c = self.transformer.config
        return (int(c.in_channels), int(c.sample_size), int(c.sample_size))

    def encode_one(self, prompt: str) -> dict[str, torch.Tensor]:
        hidden, pooled = [], []
        for tok, enc in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            out = enc(self.token_ids(tok, prompt, encoder=enc), output_hidden_states=True)
            hidden.append(out.hidden_states[-2][0])
            pooled.append(out[0][0])
        clip = torch.cat(hidden, dim=-1)
        width = int(self.transformer.config.joint_attention_dim)
        if self.text_encoder_3 is None:
            t5 = clip.new_zeros(T5_LENGTH, width)
        else:
            t5 = self.text_encoder_3(self.token_ids(self.tokenizer_3, prompt, T5_LENGTH, self.text_encoder_3))[0][0]
            t5 = t5.to(clip.dtype)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return {"encoder_hidden_states": torch.cat([clip, t5], dim=-2), "pooled_projections": torch.cat(pooled)}


def load(spec: str, path: Path, device: torch.device, dtype: torch.dtype | None) -> Model:
    pipe = SD3Diffusion(path, device, dtype)
    return prompt_model(spec, NAME, pipe, path, guidance=7.0, patch=pipe.patch)


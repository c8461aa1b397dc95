"""Stable-Diffusion-format folders: UNet2DConditionModel + AutoencoderKL + CLIP text encoder and tokenizer +
scheduler config, loaded from local files only (safetensors), as a latent Denoiser with prompt conditioning.

The Denoiser works on latents (C, H/f, W/f); prompts become `encoder_hidden_states` (computed once per
distinct prompt and cached); images are encoded and decoded with the folder's VAE and its scaling factor.
Needs `transformers` (the `text` extra).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.errors import CheckpointError, UsageError
from ..core.prediction import Denoiser
from .checkpoint import load_state_into, read_json
from .config import denoiser_from_config

PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def is_text_to_image_folder(path: Path) -> bool:
    """A folder whose model_index.json names a text encoder (a Stable-Diffusion-style pipeline)."""
    f = path / "model_index.json"
    if not f.is_file():
        return False
    try:
        return "text_encoder" in read_json(f)
    except (UsageError, CheckpointError):
        return False


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


def _require_transformers() -> Any:
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise UsageError("text-to-image folders need transformers: pip install 'ddim[text]'") from None


class LatentDiffusion:
    """The parts of a Stable-Diffusion folder and the maths between images, latents and prompts."""

    def __init__(self, path: str | Path, dtype: torch.dtype = torch.float32) -> None:
        path = Path(path)
        transformers = _require_transformers()
        import diffusers

        index = read_json(path / "model_index.json")
        for part in PARTS:
            if part not in index or not (path / part).is_dir():
                raise UsageError(f"{path} is missing its {part}/ part (a Stable-Diffusion folder has "
                                 f"{', '.join(PARTS)})")
        self.path = path
        self.unet = _diffusers_part(diffusers, path / "unet", "UNet2DConditionModel")
        self.vae = _diffusers_part(diffusers, path / "vae", "AutoencoderKL")
        self.text_encoder = _text_encoder(transformers, path / "text_encoder")
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
        self.denoiser: Denoiser = denoiser_from_config(self.unet, path / "scheduler", sample_shape=self.latent_shape)
        self.denoiser.conditioning = PromptConditioning(self.encode_prompts([""])[0:1])
        if dtype != torch.float32:
            self.to(dtype=dtype)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (int(self.vae.config.in_channels), self.latent_shape[1] * self.vae_scale,
                self.latent_shape[2] * self.vae_scale)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LatentDiffusion:
        """Move (and cast) the networks; the sampler's own maths stay in float64/float32."""
        for m in (self.unet, self.vae, self.text_encoder):
            m.to(device=device, dtype=dtype)
        if dtype is not None:
            self.denoiser.net_dtype = None if dtype == torch.float32 else dtype
        self._cache.clear()
        self.denoiser.conditioning = PromptConditioning(self.encode_prompts([""])[0:1])
        return self

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """(len(prompts), L, D) text embeddings; each distinct prompt is encoded once (cached)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        todo = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if todo:
            ids = self.tokenizer(todo, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            dev = next(self.text_encoder.parameters()).device
            emb = self.text_encoder(ids.to(dev))[0]
            for p, e in zip(todo, emb):
                self._cache[p] = e
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


def _diffusers_part(diffusers: Any, folder: Path, expected: str) -> torch.nn.Module:
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise UsageError(f"{folder} has no config.json")
    cfg = read_json(cfg_file)
    name = cfg.get("_class_name", expected)
    if name != expected:
        raise UsageError(f"{folder}: expected a {expected}, found {name}")
    weights = folder / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{folder} has no diffusion_pytorch_model.safetensors (pickled .bin weights are "
                              "refused: ddim never unpickles)")
    try:
        net = getattr(diffusers, expected).from_config({k: v for k, v in cfg.items()})
    except (TypeError, ValueError, RuntimeError) as e:
        raise UsageError(f"{cfg_file} does not describe a {expected}: {str(e).splitlines()[0]}") from None
    load_state_into(net, weights)
    return net.eval()


def _text_encoder(transformers: Any, folder: Path) -> torch.nn.Module:
    cfg_file = folder / "config.json"
    weights = folder / "model.safetensors"
    if not cfg_file.is_file():
        raise UsageError(f"{folder} has no config.json")
    if not weights.is_file():
        raise CheckpointError(f"{folder} has no model.safetensors (pickled weights are refused)")
    cfg = read_json(cfg_file)
    arch = (cfg.get("architectures") or ["CLIPTextModel"])[0]
    if arch != "CLIPTextModel":
        raise UsageError(f"{folder}: only CLIPTextModel text encoders are supported, found {arch}")
    try:
        model = transformers.CLIPTextModel(transformers.CLIPTextConfig(**{k: v for k, v in cfg.items()
                                                                          if not k.startswith("_")}))
    except (TypeError, ValueError) as e:
        raise UsageError(f"{cfg_file} does not describe a CLIPTextModel: {str(e).splitlines()[0]}") from None
    load_state_into(model, weights)
    return model.eval()


def random_folder(out: str | Path, *, latent_size: int = 8, prediction_type: str = "epsilon",
                  rescale_betas_zero_snr: bool = False, timestep_spacing: str = "trailing", seed: int = 0,
                  low_res_attention: bool = False) -> Path:
    """Write a tiny Stable-Diffusion-format folder with random weights (SD 1.x layout: CLIP text encoder and a
    character-level tokenizer, UNet2DConditionModel, AutoencoderKL with a 2× latent scale, DDIM scheduler with
    SD's β schedule): for tests and benchmarks, nothing downloaded. `low_res_attention` puts the attention
    blocks at half the latent resolution (8× cheaper per call at 64×64 latents on a CPU)."""
    import json

    transformers = _require_transformers()
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    out = Path(out)
    tok_dir = out.with_name(out.name + ".tokenizer-src")
    tok_dir.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    tok = transformers.CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=16)
    torch.manual_seed(seed)
    te = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=len(vocab), max_position_embeddings=16))
    down = ("CrossAttnDownBlock2D", "DownBlock2D")
    if low_res_attention:
        down = down[::-1]
    up = tuple(b.replace("Down", "Up") for b in down[::-1])
    unet = UNet2DConditionModel(sample_size=latent_size, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=down, up_block_types=up,
                                cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=[16, 32], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        latent_channels=4, norm_num_groups=8, sample_size=2 * latent_size)
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1, timestep_spacing=timestep_spacing,
                          prediction_type=prediction_type, rescale_betas_zero_snr=rescale_betas_zero_snr)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=te, tokenizer=tok, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    return out

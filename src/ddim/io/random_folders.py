"""Tiny random-weight model folders for tests and benchmarks (nothing downloaded): a Stable-Diffusion-format
folder built with diffusers' and transformers' own classes and saved with `save_pretrained`."""

from __future__ import annotations

from pathlib import Path

import torch

from .networks import require_transformers


def random_folder(out: str | Path, *, latent_size: int = 8, prediction_type: str = "epsilon",
                  rescale_betas_zero_snr: bool = False, timestep_spacing: str = "trailing", seed: int = 0,
                  low_res_attention: bool = False) -> Path:
    """Write a tiny Stable-Diffusion-format folder with random weights (SD 1.x layout: CLIP text encoder and a
    character-level tokenizer, UNet2DConditionModel, AutoencoderKL with a 2× latent scale, DDIM scheduler with
    SD's β schedule): for tests and benchmarks, nothing downloaded. `low_res_attention` puts the attention
    blocks at half the latent resolution (8× cheaper per call at 64×64 latents on a CPU)."""
    import json

    transformers = require_transformers()
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

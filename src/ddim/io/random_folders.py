"""Tiny random-weight model folders for tests and benchmarks (nothing downloaded): a Stable-Diffusion-format
folder built with diffusers' and transformers' own classes and saved with `save_pretrained`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .networks import require_transformers


def random_folder(out: str | Path, *, latent_size: int = 8, prediction_type: str = "epsilon",
                  rescale_betas_zero_snr: bool = False, timestep_spacing: str = "trailing", seed: int = 0,
                  low_res_attention: bool = False) -> Path:
    """Write a tiny Stable-Diffusion-format folder with random weights (SD 1.x layout: CLIP text encoder and a
    character-level tokenizer, UNet2DConditionModel, AutoencoderKL with a 2× latent scale, DDIM scheduler with
    SD's β schedule): for tests and benchmarks, nothing downloaded. `low_res_attention` puts the attention
    blocks at half the latent resolution (8× cheaper per call at 64×64 latents on a CPU)."""
    transformers = require_transformers()
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    out = Path(out)
    tok = clip_tokenizer(out)
    torch.manual_seed(seed)
    te = transformers.CLIPTextModel(clip_config(len(tok)))
    down = ("CrossAttnDownBlock2D", "DownBlock2D")
    if low_res_attention:
        down = down[::-1]
    up = tuple(b.replace("Down", "Up") for b in down[::-1])
    unet = UNet2DConditionModel(sample_size=latent_size, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=down, up_block_types=up,
                                cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8)
    vae = tiny_vae(2 * latent_size)
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1, timestep_spacing=timestep_spacing,
                          prediction_type=prediction_type, rescale_betas_zero_snr=rescale_betas_zero_snr)
    pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=te, tokenizer=tok, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def clip_tokenizer(out: Path, max_length: int = 16) -> Any:
    """A character-level CLIP tokenizer built offline (written beside `out`, nothing downloaded)."""
    import json

    transformers = require_transformers()
    tok_dir = out.with_name(out.name + ".tokenizer-src")
    tok_dir.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"),
                                      model_max_length=max_length)


def clip_config(vocab_size: int, hidden: int = 32, **kw: Any) -> Any:
    """A tiny CLIPTextConfig (2 layers, 4 heads) for the offline tokenizer."""
    transformers = require_transformers()
    return transformers.CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=hidden,
                                       intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                                       vocab_size=vocab_size, max_position_embeddings=16, **kw)


def tiny_vae(sample_size: int, latent_channels: int = 4, **kw: Any) -> Any:
    """An AutoencoderKL with a 2× latent scale."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=[16, 32], in_channels=3, out_channels=3,
                         down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                         latent_channels=latent_channels, norm_num_groups=8, sample_size=sample_size, **kw)


def random_sdxl_folder(out: str | Path, *, latent_size: int = 8, seed: int = 0,
                       force_zeros_for_empty_prompt: bool = True) -> Path:
    """A tiny SDXL-format folder with random weights (two CLIP encoders, the second with a projection; a
    `text_time` UNet2DConditionModel; EulerDiscreteScheduler with SDXL's config), saved by
    StableDiffusionXLPipeline itself."""
    transformers = require_transformers()
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    out = Path(out)
    tok = clip_tokenizer(out)
    torch.manual_seed(seed)
    te = transformers.CLIPTextModel(clip_config(len(tok)))
    te2 = transformers.CLIPTextModelWithProjection(clip_config(len(tok), projection_dim=32))
    unet = UNet2DConditionModel(sample_size=latent_size, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                                projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64,
                                norm_num_groups=8)
    sched = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                   steps_offset=1, timestep_spacing="leading", interpolation_type="linear")
    pipe = StableDiffusionXLPipeline(vae=tiny_vae(2 * latent_size), text_encoder=te, text_encoder_2=te2,
                                     tokenizer=tok, tokenizer_2=tok, unet=unet, scheduler=sched,
                                     force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def t5_tokenizer(out: Path, max_length: int = 512) -> Any:
    """A character-level T5TokenizerFast (a Unigram model over letters) built offline, nothing downloaded."""
    transformers = require_transformers()
    import tokenizers

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)] + [(c, -1.0) for c in
                                                                          "abcdefghijklmnopqrstuvwxyz"]
    tok = tokenizers.Tokenizer(tokenizers.models.Unigram(vocab, unk_id=2))
    return transformers.T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                        extra_ids=0, model_max_length=max_length)


def t5_encoder(vocab_size: int, d_model: int) -> Any:
    """A tiny T5EncoderModel (2 layers, 4 heads)."""
    transformers = require_transformers()
    return transformers.T5EncoderModel(transformers.T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=37,
                                                             num_layers=2, num_heads=4, decoder_start_token_id=0))


def random_sd3_folder(out: str | Path, *, latent_size: int = 8, seed: int = 0, t5: bool = True) -> Path:
    """A tiny SD3-format folder with random weights (CLIP-L and CLIP-G with projections, optionally T5, a one-layer
    SD3Transformer2DModel with 2×2 patches, a 16-channel VAE with shift and scaling factors, FlowMatch with
    shift 3), saved by StableDiffusion3Pipeline itself."""
    transformers = require_transformers()
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    out = Path(out)
    tok = clip_tokenizer(out)
    torch.manual_seed(seed)
    te = transformers.CLIPTextModelWithProjection(clip_config(len(tok), projection_dim=32))
    te2 = transformers.CLIPTextModelWithProjection(clip_config(len(tok), projection_dim=32))
    tok3 = t5_tokenizer(out) if t5 else None
    te3 = t5_encoder(len(tok3), 64) if t5 else None
    net = SD3Transformer2DModel(sample_size=latent_size, patch_size=2, in_channels=16, num_layers=1,
                                attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                joint_attention_dim=64, pooled_projection_dim=64, out_channels=16,
                                pos_embed_max_size=16)
    vae = tiny_vae(2 * latent_size, latent_channels=16, shift_factor=0.0609, scaling_factor=1.5305)
    pipe = StableDiffusion3Pipeline(transformer=net, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                                    text_encoder=te, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok,
                                    text_encoder_3=te3, tokenizer_3=tok3)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def random_flux_folder(out: str | Path, *, seed: int = 0, guidance_embeds: bool = True) -> Path:
    """A tiny Flux-format folder with random weights (CLIP and T5, a FluxTransformer2DModel with one double and
    one single block on 2×2-packed 4-channel latents, a VAE with shift and scaling factors, FlowMatch with
    Flux's dynamic shifting), saved by FluxPipeline itself. `guidance_embeds`: a guidance-distilled (dev) model."""
    transformers = require_transformers()
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    out = Path(out)
    tok = clip_tokenizer(out)
    torch.manual_seed(seed)
    te = transformers.CLIPTextModel(clip_config(len(tok)))
    tok2 = t5_tokenizer(out)
    te2 = t5_encoder(len(tok2), 32)
    net = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                 num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                 guidance_embeds=guidance_embeds, axes_dims_rope=(4, 4, 8))
    vae = tiny_vae(16, latent_channels=4, shift_factor=0.1159, scaling_factor=0.3611)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                            base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=sched, vae=vae, text_encoder=te, tokenizer=tok, text_encoder_2=te2,
                        tokenizer_2=tok2, transformer=net)
    pipe.save_pretrained(out, safe_serialization=True)
    return out

"""SDXL folders (built here with random weights, nothing downloaded): our default sampler against diffusers'
StableDiffusionXLPipeline at two sizes, with and without a negative prompt; the seed gives the pipeline's
noise; bad folders name the part."""

import json

import pytest
import torch

pytest.importorskip("transformers")

from ddim.core.errors import UsageError


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    from ddim.io.random_folders import random_sdxl_folder

    return random_sdxl_folder(tmp_path_factory.mktemp("sdxl") / "sdxl")


def _pipe(folder):
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("size", [(16, 16), (24, 16)])
@pytest.mark.parametrize("negative", [None, "ugly"])
def test_latents_match_the_sdxl_pipeline(sdxl, size, negative):
    """Same seed, prompt, size and steps: our DDIM under CFG gives StableDiffusionXLPipeline's latents, the
    unconditional branch zeros (force_zeros_for_empty_prompt) or the negative prompt's embedding."""
    from ddim import sample
    from ddim.io.loader import load_model

    h, w = size
    pipe = _pipe(sdxl)
    with torch.no_grad():
        theirs = pipe("a cat", negative_prompt=negative, num_inference_steps=6, guidance_scale=5.0, height=h, width=w,
                      generator=torch.Generator().manual_seed(7), output_type="latent").images
    m = load_model(str(sdxl))
    shape = m.shape_for((h, w))
    x_T = torch.randn(1, *shape, generator=torch.Generator().manual_seed(7))
    uncond = None if negative is None else m.condition([negative])
    ours = sample(m.denoiser.replace(sample_shape=shape), x_T=x_T, steps=6, spacing="leading",
                  condition=m.condition(["a cat"]), uncond=uncond, guidance=5.0)
    assert ours.shape == theirs.shape
    assert _rel(ours, theirs) <= 1e-4


def test_sdxl_loads_as_its_own_format_and_names_a_missing_part(sdxl, tmp_path):
    import shutil

    from ddim.io.loader import load_model

    m = load_model(str(sdxl))
    assert m.format == "sdxl" and m.condition_kind == "prompt" and m.image_shape == (3, 16, 16)
    cond = m.condition(["a cat", "a dog"])
    assert cond["encoder_hidden_states"].shape == (2, 16, 64) and cond["text_embeds"].shape == (2, 32)
    broken = tmp_path / "broken"
    shutil.copytree(sdxl, broken)
    shutil.rmtree(broken / "text_encoder_2")
    with pytest.raises(UsageError, match="text_encoder_2"):
        load_model(str(broken))
    idx = json.loads((sdxl / "model_index.json").read_text())
    assert idx["_class_name"] == "StableDiffusionXLPipeline"


def test_cli_seed_gives_the_pipelines_image(sdxl, tmp_path, capsys):
    """`ddim sample --model FOLDER --prompt P --seed S -n 1 --size WxH` draws x_T as the pipeline does from
    Generator().manual_seed(S), so the image is the pipeline's for that generator."""
    import numpy as np

    from ddim.app.cli import main

    out = tmp_path / "img.npy"
    assert main(["sample", "--model", str(sdxl), "--prompt", "a cat", "--seed", "5", "-n", "1", "--size", "16x24",
                 "--steps", "4", "--sampler", "ddim", "--spacing", "leading", "--guidance", "5",
                 "--out", str(out)]) == 0
    ours = np.load(out)
    pipe = _pipe(sdxl)
    with torch.no_grad():
        theirs = pipe("a cat", num_inference_steps=4, guidance_scale=5.0, height=24, width=16,
                      generator=torch.Generator().manual_seed(5), output_type="pt").images
    assert ours.shape == (1, 3, 24, 16)
    assert float(np.abs(ours - (2 * theirs.numpy() - 1)).max()) <= 1e-4
    assert main(["sample", "--model", str(sdxl), "--prompt", "a cat", "-n", "1", "--size", "15x16",
                 "--out", str(out)]) == 2
    assert "multiples of 2" in capsys.readouterr().err


@pytest.mark.parametrize("suite", ["speed", "reconstruction"])
def test_bench_suites_on_an_sdxl_folder_quick(sdxl, tmp_path, suite):
    from ddim.bench.suites import run

    text = run(suite, tmp_path, quick=True, model=str(sdxl)).read_text()
    assert "Command:" in text and ("StableDiffusionXLPipeline" in text if suite == "speed" else "negative" in text)

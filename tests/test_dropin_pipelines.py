"""The drop-ins inside diffusers' own StableDiffusionPipeline and StableDiffusionImg2ImgPipeline on a tiny random
folder (nothing downloaded): txt2img and img2img at strength 0.3 and 0.6 give diffusers' latents."""

import pytest
import torch

pytest.importorskip("transformers")

import diffusers
from diffusers.utils import logging as dlogging

import ddim.diffusers as ours

dlogging.set_verbosity_error()
NAMES = [n for n in ours.__all__ if not n.startswith("FlowMatch")]
STEPS = {"LCMScheduler": 4, "TCDScheduler": 4, "DPMSolverSDEScheduler": 5}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from ddim.io.random_folders import random_folder

    return random_folder(tmp_path_factory.mktemp("sd") / "sd")


@pytest.fixture(scope="module")
def pipes(folder):
    txt = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None,
                                                            requires_safety_checker=False)
    img = diffusers.StableDiffusionImg2ImgPipeline(**txt.components)
    for p in (txt, img):
        p.set_progress_bar_config(disable=True)
    return txt, img


def _latents(pipe, cls, **call):
    """Latents of one call with the scheduler of class `cls` made from the folder's config (a user's switch)."""
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    torch.manual_seed(1234)  # DPMSolverSDEScheduler's Brownian-tree seed
    with torch.no_grad():
        return pipe(prompt="a cat", negative_prompt="dog", guidance_scale=3.0, output_type="latent",
                    generator=torch.Generator().manual_seed(0), **call).images


@pytest.mark.parametrize("name", NAMES)
def test_txt2img_and_img2img_equal_diffusers(pipes, name):
    txt, img = pipes
    steps = STEPS.get(name, 8)
    a = _latents(txt, getattr(ours, name), num_inference_steps=steps, height=16, width=16)
    b = _latents(txt, getattr(diffusers, name), num_inference_steps=steps, height=16, width=16)
    assert isinstance(txt.scheduler, getattr(diffusers, name))
    assert float((a - b).abs().max()) < 1e-5 * max(1.0, float(b.abs().max())), name
    init = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for strength in (0.3, 0.6):
        a = _latents(img, getattr(ours, name), image=init, strength=strength, num_inference_steps=10)
        b = _latents(img, getattr(diffusers, name), image=init, strength=strength, num_inference_steps=10)
        assert torch.isfinite(a).all()
        assert float((a - b).abs().max()) < 1e-5 * max(1.0, float(b.abs().max())), (name, strength)

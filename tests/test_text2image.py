"""Stable-Diffusion-format folders, built here from random weights and tiny configs (nothing downloaded):
our samplers under CFG against diffusers' StableDiffusionPipeline, prompt-conditioned inversion, bad folders."""

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from ddim.core.errors import UsageError
from ddim.core.samplers import SAMPLERS


def build_sd_folder(path, prediction_type: str = "epsilon"):
    from ddim.io.random_folders import random_folder

    return random_folder(path / "sd", prediction_type=prediction_type)


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return build_sd_folder(tmp_path_factory.mktemp("sd"))


def _pipe(folder, scheduler_cls, **kw):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config, **kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(n=2, seed=0):
    return torch.randn(n, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("sampler,scheduler,kw", [
    ("ddim", "DDIMScheduler", {}),
    ("dpmpp_2m", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    ("unipc", "UniPCMultistepScheduler", {"solver_order": 2}),
])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_cfg_latents_match_stable_diffusion_pipeline(tmp_path, sampler, scheduler, kw, prediction_type):
    import diffusers

    from ddim.io.loader import load_model
    from ddim.ops.text_to_image import text_to_image

    folder = build_sd_folder(tmp_path, prediction_type) if prediction_type != "epsilon" else \
        build_sd_folder(tmp_path)
    pipe = _pipe(folder, getattr(diffusers, scheduler), **kw)
    x = _latents()
    with torch.no_grad():
        theirs = pipe(["a cat", "a dog"], negative_prompt=["ugly", "ugly"], num_inference_steps=8, guidance_scale=7.5,
                      latents=x.clone(), output_type="latent").images
    model = load_model(folder)
    _, ours = text_to_image(model, ["a cat", "a dog"], negative_prompt="ugly", guidance=7.5,
                            steps=8, sampler=sampler, latents=x, return_latents=True)
    assert _rel(ours, theirs) <= 1e-4


def test_ddim_eta_one_matches_the_pipeline_with_the_same_noise(sd):
    from diffusers import DDIMScheduler

    from ddim.core.guidance import bind
    from ddim.io.loader import load_model

    pipe = _pipe(sd, DDIMScheduler)
    x = _latents()
    with torch.no_grad():
        # 8 steps: T/8 is an integer, so diffusers' previous timestep t − T//n is the next entry of its list (with
        # 6 steps it is not: 999 → 833 while the list says 832; ours follows the list)
        theirs = pipe(["a cat", "a dog"], num_inference_steps=8, guidance_scale=5.0, eta=1.0, latents=x.clone(),
                      generator=torch.Generator().manual_seed(11), output_type="latent").images
    lp = load_model(sd)
    den = bind(lp.denoiser, lp.condition(["a cat", "a dog"]), 5.0)
    ts = den.path.timesteps(8, "trailing")
    with torch.no_grad():
        ours = SAMPLERS["ddim"](den, x, ts, generator=torch.Generator().manual_seed(11), eta=1.0)
    assert _rel(ours, theirs) <= 1e-4


def test_prompt_conditioned_refined_inversion_round_trip(sd):
    from ddim.io.loader import load_model
    from ddim.ops.inversion import invert

    lp = load_model(sd)
    z0 = _latents(2, seed=3)
    cond = lp.condition(["a cat"])
    with torch.no_grad():
        from ddim.core.sample import sample

        z = invert(lp.denoiser, z0, 50, refine=8, condition=cond, guidance=1.0)  # random weights: stiff
        rec = sample(lp.denoiser, x_T=z, steps=50, condition=cond, guidance=1.0)
    assert _rel(rec, z0) <= 1e-5


def test_images_encode_decode_and_edit(sd):
    from ddim.io.loader import load_model
    from ddim.ops.text_to_image import edit_images, img2img, text_to_image

    lp = load_model(sd)
    imgs = text_to_image(lp, "a cat", 2, guidance=3.0, steps=4)
    assert imgs.shape == (2, 3, 16, 16) and float(imgs.abs().max()) <= 1.0
    r = edit_images(lp, imgs, "a cat", "a dog", steps=4, guidance=3.0, inversion="negative")
    assert r.edited.shape == imgs.shape and r.reconstruction.shape == imgs.shape
    out = img2img(lp, imgs, "a dog", 0.5, steps=4, guidance=3.0)
    assert out.shape == imgs.shape


def test_per_sample_seeds_and_prompt_cache(sd):
    from ddim.io.loader import load_model
    from ddim.ops.text_to_image import text_to_image

    lp = load_model(sd)
    calls = []
    enc = lp.encoder
    orig = enc.text_encoder.forward
    enc.text_encoder.forward = lambda *a, **k: (calls.append(a[0].shape[0]), orig(*a, **k))[1]
    enc._cache.clear()
    three = text_to_image(lp, ["a cat", "a dog", "a cat"], 3, guidance=4.0, steps=4, seed=5)
    assert sum(calls) == 2  # each distinct prompt encoded once
    one = text_to_image(lp, "a dog", 1, guidance=4.0, steps=4, seeds=[6])
    assert torch.allclose(one[0], three[1], atol=1e-5)


def test_bfloat16_networks_keep_float32_sampler_maths(sd):
    from ddim.io.loader import load_model
    from ddim.ops.text_to_image import text_to_image

    ref = text_to_image(load_model(sd), "a cat", 1, guidance=3.0, steps=4)
    lp = load_model(sd, "cpu", torch.bfloat16)
    _, z = text_to_image(lp, "a cat", 1, guidance=3.0, steps=4, return_latents=True)
    assert z.dtype == torch.float32 and next(lp.codec.unet.parameters()).dtype == torch.bfloat16
    assert float((lp.decode(z) - ref).abs().max()) < 0.2


def test_cli_prompt_sampling_writes_images(sd, tmp_path):
    from ddim.app.cli import main

    out = tmp_path / "imgs.npy"
    assert main(["sample", "--model", str(sd), "--prompt", "a cat", "--negative-prompt", "ugly", "--guidance",
                 "7.5", "--steps", "4", "--sampler", "dpmpp_2m", "--seed", "0", "-n", "2", "--out", str(out)]) == 0
    arr = np.load(out)
    assert arr.shape == (2, 3, 16, 16) and np.abs(arr).max() <= 1.0
    assert out.with_suffix(".png").is_file()


@pytest.mark.parametrize("breakage,match", [
    (lambda p: __import__("shutil").rmtree(p / "vae"), "vae"),
    (lambda p: (p / "text_encoder" / "model.safetensors").write_bytes(b"not a safetensors file"), "model.safetensors"),
    (lambda p: (p / "unet" / "diffusion_pytorch_model.safetensors").unlink(), "diffusion_pytorch_model"),
    (lambda p: __import__("shutil").rmtree(p / "tokenizer"), "tokenizer"),
])
def test_missing_or_corrupt_parts_are_one_line_errors(sd, tmp_path, breakage, match, capsys):
    import shutil

    from ddim.app.cli import main

    folder = tmp_path / "broken"
    shutil.copytree(sd, folder)
    breakage(folder)
    assert main(["sample", "--model", str(folder), "--prompt", "a cat", "-n", "1", "--steps", "2",
                 "--out", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]


def test_class_flags_on_a_prompt_model_are_refused(sd):
    from ddim.core.sample import sample
    from ddim.io.loader import load_model

    with pytest.raises(UsageError, match="prompts"):
        sample(load_model(sd).denoiser, (1, 4, 8, 8), condition=[3], guidance=2.0)


@pytest.mark.parametrize("suite", ["speed", "reconstruction"])
def test_bench_on_a_stable_diffusion_folder_quick(sd, tmp_path, suite):
    from ddim.bench.suites import run

    text = run(suite, tmp_path, quick=True, model=str(sd)).read_text()
    assert "Command:" in text and ("diffusers" in text if suite == "speed" else "negative" in text)


def test_cli_invert_and_edit_real_images_with_prompts(sd, tmp_path):
    from ddim.app.cli import main

    imgs = tmp_path / "imgs.npy"
    assert main(["sample", "--model", str(sd), "--prompt", "a cat", "--steps", "4", "-n", "2", "--out",
                 str(imgs)]) == 0
    assert main(["invert", "--model", str(sd), "--input", str(imgs), "--prompt", "a cat", "--steps", "4",
                 "--out", str(tmp_path / "z.npy")]) == 0
    assert np.load(tmp_path / "z.npy").shape == (2, 4, 8, 8)
    assert main(["edit", "--model", str(sd), "--input", str(imgs), "--prompt", "a cat", "--to-prompt", "a dog",
                 "--strength", "0.5", "--steps", "4", "--inversion", "negative", "--out", str(tmp_path / "e.png")]) == 0
    assert (tmp_path / "e.png").is_file()


@pytest.mark.parametrize("sampler,scheduler", [("ddim", "DDIMScheduler"), ("dpmpp_2m", "DPMSolverMultistepScheduler")])
def test_zero_terminal_snr_v_prediction_folder_matches_the_pipeline(tmp_path, sampler, scheduler):
    """SD 2.x-style: v-prediction with rescale_betas_zero_snr (ᾱ_T = 0), trailing spacing. diffusers' DPM-Solver
    replaces ᾱ_T = 0 by 2⁻²⁴ (so λ_T is finite and its second step is second order); ours steps from the exact
    α = 0 (the first step is the exact exponential integrator, the second first order), so 2M differs by ~1e-3."""
    import diffusers

    from ddim.io.loader import load_model
    from ddim.io.random_folders import random_folder
    from ddim.ops.text_to_image import text_to_image

    folder = random_folder(tmp_path / "sd", prediction_type="v_prediction", rescale_betas_zero_snr=True)
    pipe = _pipe(folder, getattr(diffusers, scheduler))
    x = _latents()
    with torch.no_grad():
        theirs = pipe(["a cat", "a dog"], num_inference_steps=8, guidance_scale=5.0, latents=x.clone(),
                      output_type="latent").images
    lp = load_model(folder)
    assert lp.denoiser.path.alpha_bar(999) == 0.0
    _, ours = text_to_image(lp, ["a cat", "a dog"], guidance=5.0, steps=8, sampler=sampler, latents=x,
                            return_latents=True)
    assert _rel(ours, theirs) <= (1e-4 if sampler == "ddim" else 2e-3)


def test_memory_verdict_per_implementation():
    from ddim.bench.text2image import _memory_verdict

    ddpm = {"mem_ours": 20.0, "mem_theirs": 20.0}
    rows = [{"mem_ours": 18.0, "mem_theirs": 13.0}, {"mem_ours": 19.0, "mem_theirs": 14.0}]
    text = _memory_verdict(ddpm, rows)
    assert "ours: DDIM 5–10 % below DDPM's 20.0 MB, the claim does not hold" in text
    assert "diffusers: DDIM 30–35 % below DDPM's 20.0 MB, the claim holds" in text
    assert "at most 7.0 MB" in text
    assert "below 5 MB" in _memory_verdict({"mem_ours": 2.0, "mem_theirs": 30.0}, rows)


def test_prompt_requests_are_batch_invariant_bit_for_bit(sd):
    """A prompt request inside a batch (mixed prompts, CFG doubled) gives the bits of the same sample alone."""
    from ddim.api import ModelStore, parse_request, run

    store = ModelStore()
    base = {"task": "sample", "model": str(sd), "steps": 3, "sampler": "dpmpp_2m", "batch_invariant": True,
            "guidance": {"scale": 5.0}, "negative_prompt": "ugly"}
    batch = run(parse_request({**base, "prompt": ["a cat", "a dog", "a cow"], "n": 35}), store).main
    alone = run(parse_request({**base, "prompt": ["a dog"], "seeds": [34]}), store).main
    assert np.array_equal(batch[34], alone[0])  # sample 34 had prompt 34 mod 3 = 1: "a dog"


@pytest.mark.parametrize("argv", [
    ["sample", "--prompt", "a cat", "--negative-prompt", "blurry", "--guidance", "7.5", "--steps", "3", "--sampler",
     "dpmpp_2m", "--seed", "0", "-n", "2", "--dtype", "bfloat16"],
    ["sample", "--prompt", "a cat", "--steps", "2", "-n", "1", "--size", "16", "24"],
])
def test_prompt_commands_as_flags_and_as_request_json_give_identical_bits(sd, argv, tmp_path, capsys):
    from ddim.app.cli import main

    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    assert main([argv[0], "--model", str(sd), *argv[1:], "--out", str(a)]) == 0
    capsys.readouterr()
    assert main([argv[0], "--model", str(sd), *argv[1:], "--print-request"]) == 0
    (tmp_path / "r.json").write_text(capsys.readouterr().out)
    assert main(["run", str(tmp_path / "r.json"), "--out", str(b)]) == 0
    assert np.array_equal(np.load(a), np.load(b))
    if "--size" in argv:
        assert np.load(a).shape == (1, 3, 16, 24)


def test_a_size_off_the_latent_grid_is_refused(sd):
    from ddim.api import parse_request, run

    with pytest.raises(UsageError, match="multiples of 2"):
        run(parse_request({"task": "sample", "model": str(sd), "prompt": ["a cat"], "n": 1, "size": [15, 16]}))

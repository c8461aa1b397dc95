"""SD3 and Flux folders (built here with random weights, nothing downloaded): our default sampler against
StableDiffusion3Pipeline and FluxPipeline latents at two sizes, with and without a negative prompt; the seed gives
the pipeline's image; every flow sampler runs on each; bad sizes, parts and guidance flags are refused."""

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from ddim.core.errors import UsageError

FORMATS = ("sd3", "sd3-no-t5", "flux", "flux-schnell")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from ddim.io.random_folders import random_flux_folder, random_sd3_folder

    root = tmp_path_factory.mktemp("t2i")
    return {"sd3": random_sd3_folder(root / "sd3"), "sd3-no-t5": random_sd3_folder(root / "sd3-no-t5", t5=False),
            "flux": random_flux_folder(root / "flux"),
            "flux-schnell": random_flux_folder(root / "flux-schnell", guidance_embeds=False)}


def _pipe(name, folder):
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    if name.startswith("flux"):
        pipe = FluxPipeline.from_pretrained(folder)
    else:
        extra = {"text_encoder_3": None, "tokenizer_3": None} if name == "sd3-no-t5" else {}
        pipe = StableDiffusion3Pipeline.from_pretrained(folder, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pipeline_latents(name, pipe, h, w, negative, seed, steps=4):
    """The pipeline's final latents, unpacked to (1, C, h/f, w/f) for Flux."""
    from ddim.io.formats.flux import unpack

    with torch.no_grad():
        if name.startswith("flux"):
            out = pipe("a cat", negative_prompt=negative, true_cfg_scale=2.0 if negative else 1.0,
                       guidance_scale=3.5, num_inference_steps=steps, height=h, width=w,
                       generator=torch.Generator().manual_seed(seed), output_type="latent").images
            f = pipe.vae_scale_factor
            return unpack(out, h // f, w // f)
        return pipe("a cat", negative_prompt=negative, guidance_scale=7.0, num_inference_steps=steps, height=h,
                    width=w, generator=torch.Generator().manual_seed(seed), output_type="latent").images


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("size", [(16, 16), (32, 16)])
@pytest.mark.parametrize("negative", [None, "ugly"])
@pytest.mark.parametrize("name", FORMATS)
def test_latents_match_the_pipeline(folders, name, size, negative):
    """Same seed, prompt, size and steps: our Euler (ddim on the flow path) under CFG — true CFG for Flux — gives
    the pipeline's latents (SD3: shift 3, T5 states or zeros; Flux: packing, ids, μ from the size)."""
    from ddim import sample
    from ddim.io.loader import load_model

    h, w = size
    theirs = _pipeline_latents(name, _pipe(name, folders[name]), h, w, negative, 7)
    m = load_model(str(folders[name]))
    assert m.format == name.split("-")[0]
    shape = m.shape_for((h, w))
    x_T = torch.randn(1, *shape, generator=torch.Generator().manual_seed(7))
    flux = name.startswith("flux")
    g = (2.0 if negative else 1.0) if flux else 7.0
    uncond = None if negative is None else m.condition([negative])
    ours = sample(m.denoiser.replace(sample_shape=shape), x_T=x_T, steps=4, condition=m.condition(["a cat"]),
                  uncond=uncond, guidance=g)
    assert ours.shape == theirs.shape
    assert _rel(ours, theirs) <= 1e-4


def test_flux_mu_follows_the_size(folders):
    """Flux's dynamic shift: the σ list depends on the token count of the size asked for."""
    from ddim.io.loader import load_model

    den = load_model(str(folders["flux"])).denoiser
    a = den.replace(sample_shape=(4, 8, 8)).path.timesteps(4)
    b = den.replace(sample_shape=(4, 64, 64)).path.timesteps(4)
    assert float(a[0]) == 1.0 and float((b[1:] - a[1:]).min()) > 0  # more tokens: shifted towards noise


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_cli_seed_gives_the_pipelines_image(folders, name, tmp_path, capsys):
    """`ddim sample --model FOLDER --prompt P --seed S -n 1 --size WxH` is the pipeline's image for
    Generator().manual_seed(S) (Flux: the noise before packing)."""
    from ddim.app.cli import main

    out = tmp_path / "img.npy"
    g = ["--distilled-guidance", "3.5"] if name == "flux" else ["--guidance", "7"]
    assert main(["sample", "--model", str(folders[name]), "--prompt", "a cat", "--seed", "5", "-n", "1", "--size",
                 "16x32", "--steps", "4", "--out", str(out), *g]) == 0
    ours = np.load(out)
    pipe = _pipe(name, folders[name])
    kw = {"guidance_scale": 3.5} if name == "flux" else {"guidance_scale": 7.0}
    with torch.no_grad():
        theirs = pipe("a cat", num_inference_steps=4, height=32, width=16, generator=torch.Generator().manual_seed(5),
                      output_type="pt", **kw).images
    assert ours.shape == (1, 3, 32, 16)
    assert float(np.abs(ours - (2 * theirs.numpy() - 1)).max()) <= 1e-4
    assert main(["sample", "--model", str(folders[name]), "--prompt", "a cat", "-n", "1", "--size", "18x16",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "multiples of 4" in err and "16x16 or 20x16" in err


FLOW_SAMPLERS = ("ddim", "heun", "midpoint", "rk4", "dpmpp_2m", "dpmpp_3m", "dpmpp_2s", "unipc", "pndm",
                 "dpmpp_sde", "dpmpp_2m_sde", "ddpm")


@pytest.mark.parametrize("sampler", FLOW_SAMPLERS)
@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_every_flow_sampler_runs_through_the_request_api(folders, name, sampler):
    from ddim.api import parse_request, run

    req = parse_request({"task": "sample", "model": str(folders[name]), "prompt": ["a cat"], "n": 1, "seed": 1,
                         "steps": 3, "sampler": sampler, "size": [16, 16], "guidance": {"scale": 2.0}})
    img = run(req).arrays["samples"]
    assert img.shape == (1, 3, 16, 16) and np.isfinite(img).all()


def test_guidance_inputs_and_refusals(folders):
    """Flux-dev takes its distilled scale as an input; CFG++ and a distilled scale are refused where they
    don't apply, naming the field."""
    from ddim.api import parse_request, run

    def req(name, **kw):
        return parse_request({"task": "sample", "model": str(folders[name]), "prompt": ["a cat"], "n": 1, "seed": 1,
                              "steps": 2, "size": [16, 16], **kw})

    a = run(req("flux", guidance={"distilled": 1.0})).arrays["samples"]
    b = run(req("flux", guidance={"distilled": 6.0})).arrays["samples"]
    assert not np.array_equal(a, b)
    with pytest.raises(UsageError, match=r"guidance\.rule: cfg\+\+"):
        run(req("flux", guidance={"rule": "cfg++", "scale": 0.5}))
    for name in ("sd3", "flux-schnell"):
        with pytest.raises(UsageError, match=r"guidance\.distilled"):
            run(req(name, guidance={"distilled": 2.0}))
    run(req("sd3", guidance={"rule": "apg", "scale": 3.0, "interval": [0.1, 10.0]}))
    run(req("flux", guidance={"rule": "cfg", "scale": 2.0, "rescale": 0.5}, negative_prompt="ugly"))


@pytest.mark.parametrize("name", ["sd3"])
def test_img2img_inversion_and_bfloat16(folders, name):
    from ddim.api import parse_request, run
    from ddim.io.loader import load_model

    m = load_model(str(folders[name]))
    imgs = m.decode(torch.randn(2, *m.sample_shape, generator=torch.Generator().manual_seed(0)))
    data = str(folders[name].parent / f"{name}-imgs.npy")
    np.save(data, imgs.numpy())
    r = run(parse_request({"task": "reconstruct", "model": str(folders[name]), "data": data, "prompt": ["a cat"],
                           "steps": 8}))
    rec = r.arrays["reconstruction"]
    assert rec.shape == (2, 3, 16, 16) and np.isfinite(rec).all()
    out = run(parse_request({"task": "img2img", "model": str(folders[name]), "data": data, "prompt": ["a dog"],
                             "steps": 4, "strength": 0.5, "seed": 0})).arrays["samples"]
    assert out.shape == (2, 3, 16, 16)
    half = run(parse_request({"task": "sample", "model": str(folders[name]), "prompt": ["a cat"], "n": 1, "seed": 1,
                              "steps": 2, "size": [16, 16], "dtype": "bfloat16"})).arrays["samples"]
    assert half.shape == (1, 3, 16, 16) and np.isfinite(half).all()


def test_parts_and_long_prompts(folders, tmp_path):
    import shutil

    from ddim.io.loader import load_model

    broken = tmp_path / "broken"
    shutil.copytree(folders["flux"], broken)
    shutil.rmtree(broken / "transformer")
    with pytest.raises(UsageError, match="transformer"):
        load_model(str(broken))
    m = load_model(str(folders["sd3"]))
    with pytest.warns(UserWarning, match="truncated to 16 tokens"):
        m.encoder.encode_one("a very long prompt about a cat on a mat")

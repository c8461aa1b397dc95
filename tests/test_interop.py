"""diffusers interoperability: loading their folders, our scheduler inside their pipelines."""

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDPMPipeline, DDPMScheduler
from diffusers import DDIMScheduler as TheirDDIM

import ddim
from ddim.diffusers import DDIMScheduler
from ddim.io.config import denoiser_from_config
from ddim.io.loader import load_model


def load(path):
    return load_model(path).denoiser


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    from ddim.models.unet import small_unet

    return small_unet(8, 1).eval()


def _run(pipe, steps, eta=0.0, seed=0):
    return pipe(batch_size=2, num_inference_steps=steps, eta=eta, output_type="np",
                generator=torch.Generator().manual_seed(seed)).images


@pytest.mark.parametrize("spacing,steps,clip", [("leading", 20, False), ("leading", 20, True), ("trailing", 10, False)])
def test_our_scheduler_in_ddim_pipeline_matches_where_diffusers_is_right(unet, spacing, steps, clip):
    cfg = {"timestep_spacing": spacing, "clip_sample": clip}
    theirs = DDIMPipeline(unet=unet, scheduler=TheirDDIM(**cfg))
    ours = DDIMPipeline(unet=unet, scheduler=TheirDDIM(**cfg))
    ours.scheduler = DDIMScheduler(**cfg)
    assert isinstance(ours.scheduler, DDIMScheduler)
    a, b = _run(theirs, steps), _run(ours, steps)
    # our ᾱ is float64, diffusers' a float32 cumprod (~1e-6 relative apart): far below 1/255 of a pixel
    assert np.abs(a - b).max() < (1e-5 if not clip else 5e-4)


def test_our_scheduler_fixes_linspace_and_matches_our_sampler(unet):
    cfg = {"timestep_spacing": "linspace", "clip_sample": False}
    theirs = DDIMPipeline(unet=unet, scheduler=TheirDDIM(**cfg))
    ours = DDIMPipeline(unet=unet, scheduler=TheirDDIM(**cfg))
    ours.scheduler = DDIMScheduler(**cfg)
    a, b = _run(theirs, 37), _run(ours, 37)
    assert np.abs(a - b).max() > 1e-3  # diffusers' stride T//S is not the next list entry
    den = denoiser_from_config(unet, dict(ours.scheduler.config))
    x_T = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = ddim.sample(den, x_T=x_T, steps=37, spacing="linspace")
    ref = ((x / 2 + 0.5).clamp(0, 1)).permute(0, 2, 3, 1).numpy()
    assert np.abs(ref - b).max() < 5e-5  # the drop-in steps on diffusers' float32 ᾱ table, the sampler on float64


def test_zero_snr_eta1_is_finite(unet):
    cfg = {"timestep_spacing": "trailing", "rescale_betas_zero_snr": True, "prediction_type": "v_prediction",
           "clip_sample": False}
    pipe = DDIMPipeline(unet=unet, scheduler=TheirDDIM(**cfg))
    pipe.scheduler = DDIMScheduler(**cfg)
    assert np.isfinite(_run(pipe, 10, eta=1.0)).all()


def test_scheduler_contract(tmp_path):
    s = DDIMScheduler(timestep_spacing="trailing", steps_offset=0)
    s.save_config(tmp_path)
    s2 = DDIMScheduler.from_config(DDIMScheduler.load_config(tmp_path))
    s2.set_timesteps(10)
    assert int(s2.timesteps[0]) == 999 and len(s2.timesteps) == 10
    x0, noise = torch.randn(3, 4), torch.randn(3, 4)
    t = torch.tensor([0, 500, 999])
    ref = TheirDDIM(timestep_spacing="trailing").add_noise(x0, noise, t)
    assert torch.allclose(s2.add_noise(x0, noise, t), ref, atol=1e-6)
    assert s2.scale_model_input(x0, 5) is x0 and s2.init_noise_sigma == 1.0 and s2.order == 1
    theirs = TheirDDIM(timestep_spacing="trailing")  # a timestep off the list steps by t − T//n, as diffusers'
    theirs.set_timesteps(10)
    assert torch.allclose(s2.step(noise, 998, x0).prev_sample, theirs.step(noise, 998, x0).prev_sample, atol=1e-5)
    with pytest.raises(ValueError, match="set_timesteps"):
        DDIMScheduler().step(noise, 998, x0)


def test_load_pipeline_folder_written_by_diffusers(unet, tmp_path):
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(prediction_type="epsilon")).save_pretrained(tmp_path / "p")
    den = load(tmp_path / "p")
    assert den.sample_shape == (1, 8, 8) and den.prediction_type == "epsilon"
    x = ddim.sample(den, (2, 1, 8, 8), steps=4, sampler="ddpm")
    assert x.shape == (2, 1, 8, 8) and bool(torch.isfinite(x).all())
    assert load_model(tmp_path / "p").sample_shape == (1, 8, 8)


def test_load_bad_folders(unet, tmp_path):
    with pytest.raises(ValueError, match="not a diffusers model folder"):
        (tmp_path / "empty").mkdir()
        load(tmp_path / "empty")
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(tmp_path / "p")
    cfg_path = tmp_path / "p" / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "beta_schedule": "sigmoid"}))
    with pytest.raises(ValueError, match="beta_schedule"):
        load(tmp_path / "p")
    cfg_path.write_text(json.dumps({**cfg, "prediction_type": "flow"}))
    with pytest.raises(ValueError, match="prediction_type"):
        load(tmp_path / "p")
    cfg_path.write_text(json.dumps(cfg))
    (tmp_path / "p" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(unet.state_dict(), tmp_path / "p" / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match="never unpickles"):
        load(tmp_path / "p")


def test_dpmpp_drop_in_matches_our_sampler_and_diffusers(unet):
    """DDIMPipeline passes eta, which diffusers' DPM scheduler rejects (and so does ours, as a drop-in): a loop."""
    from diffusers import DPMSolverMultistepScheduler as TheirDPM

    from ddim.diffusers import DPMSolverMultistepScheduler

    x_T = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    outs = []
    for cls in (DPMSolverMultistepScheduler, TheirDPM):
        s = cls(timestep_spacing="trailing", solver_order=2)
        s.set_timesteps(12)
        y = x_T.clone()
        with torch.no_grad():
            for t in s.timesteps:
                y = s.step(unet(y, t).sample, t, y).prev_sample
        outs.append(y)
    assert float((outs[0] - outs[1]).abs().max()) < 1e-5 * max(1.0, float(outs[1].abs().max()))
    den = denoiser_from_config(unet, {"timestep_spacing": "trailing"})
    with torch.no_grad():
        x = ddim.sample(den, x_T=x_T, steps=12, sampler="dpmpp_2m")
    assert float((x - outs[0]).abs().max()) < 5e-4 * max(1.0, float(x.abs().max()))  # float32 vs float64 ᾱ
    s = DPMSolverMultistepScheduler(solver_order=3)
    s.set_timesteps(10)
    assert len(s.timesteps) == 10 and int(s.timesteps[0]) == 999


def test_drop_in_takes_trained_betas_as_an_array_and_few_train_timesteps():
    """diffusers accepts numpy trained_betas and num_train_timesteps below 50; so do ours (issue 22's first fixes)."""
    import numpy as np
    from diffusers import DDIMScheduler as TheirDDIM

    from ddim.diffusers import DDIMScheduler

    betas = np.linspace(1e-4, 0.02, 1000)
    assert torch.allclose(DDIMScheduler(trained_betas=betas).alphas_cumprod.double(),
                          TheirDDIM(trained_betas=betas).alphas_cumprod.double(), rtol=1e-6)
    kw = {"num_train_timesteps": 20, "timestep_spacing": "trailing"}
    ours, theirs = DDIMScheduler(**kw), TheirDDIM(**kw)
    ours.set_timesteps(5)
    theirs.set_timesteps(5)
    assert ours.timesteps.tolist() == theirs.timesteps.tolist()
    with pytest.raises(ValueError, match="trained_betas must be"):
        DDIMScheduler(trained_betas=np.array([["a"]]))

"""What users do with the SDXL, SD3 and Flux folders beyond sampling (tiny random folders built here, nothing
downloaded): img2img and inversion at any size the model takes (Flux's μ follows it), prompt-swap editing after
naive, refined and negative-prompt inversion, a GITS schedule searched under a prompt at a size and sampled with
`spacing: optimised`, float16, over-long prompts refused when asked, and the speed and reconstruction benches."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from ddim.core.errors import UsageError

FORMATS = ("sdxl", "sd3", "flux")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from ddim.io.random_folders import random_flux_folder, random_sd3_folder, random_sdxl_folder

    root = tmp_path_factory.mktemp("t2i-workflows")
    return {"sdxl": random_sdxl_folder(root / "sdxl"), "sd3": random_sd3_folder(root / "sd3"),
            "flux": random_flux_folder(root / "flux")}


def _images(folder, h, w, n=2):
    """n decoded images of height h and width w, saved beside the folder; (path, array)."""
    from ddim.io.loader import load_model

    m = load_model(str(folder))
    z = torch.randn(n, *m.shape_for((h, w)), generator=torch.Generator().manual_seed(0))
    imgs = m.decode(z).numpy()
    path = folder.parent / f"{folder.name}-{h}x{w}.npy"
    np.save(path, imgs)
    return str(path), imgs


@pytest.mark.parametrize("name", FORMATS)
def test_inputs_at_a_size_other_than_the_folders(folders, name):
    """img2img and refined reconstruction take 16×32 images (not the folder's default size) through the request
    API; a size the model can't take is refused naming the data field and the allowed sizes."""
    from ddim.api import parse_request, run
    from ddim.api.run import input_rows, resolve_plan
    from ddim.io.loader import load_model

    data, imgs = _images(folders[name], 16, 32)
    m = load_model(str(folders[name]))
    assert m.image_shape[1:] != (16, 32)
    base = {"model": str(folders[name]), "data": data, "prompt": ["a cat"], "steps": 6}
    rec = run(parse_request({**base, "task": "reconstruct", "refine": 3, "guidance": {"scale": 1.0}}))
    assert rec.arrays["reconstruction"].shape == imgs.shape and np.isfinite(rec.summary["mse"])
    out = run(parse_request({**base, "task": "img2img", "strength": 0.6, "seed": 0})).arrays["samples"]
    assert out.shape == imgs.shape and np.isfinite(out).all()
    if name == "flux":  # the dynamic shift follows the inputs' token count, as for a sample at that size
        req = parse_request({**base, "task": "img2img"})
        x, _ = input_rows(req, m)
        at_size = resolve_plan(req, m, x).timesteps
        sampled = resolve_plan(parse_request({"task": "sample", "model": str(folders[name]), "prompt": ["a cat"],
                                              "steps": 6, "size": [16, 32]}), m).timesteps
        assert torch.equal(at_size, sampled) and not torch.equal(at_size, resolve_plan(req, m).timesteps)
    bad = folders[name].parent / f"{name}-bad.npy"
    np.save(bad, np.zeros((1, 3, 17, 15), np.float32))
    with pytest.raises(UsageError, match=r"request field data: .*multiples of \d+.*got 15x17"):
        run(parse_request({**base, "task": "img2img", "data": str(bad)}))


@pytest.mark.parametrize("name", FORMATS)
def test_prompt_swap_editing_after_each_inversion(folders, name):
    """edit with to_prompt after naive, refined and negative-prompt inversion: a grid of real / reconstruction /
    edited; refined inversion reconstructs the latents at least as well as naive (same steps and guidance)."""
    from ddim.api import parse_request, run

    data, imgs = _images(folders[name], 16, 16)
    mse = {}
    for inversion in ("naive", "refined", "negative"):
        r = run(parse_request({"task": "edit", "model": str(folders[name]), "data": data, "prompt": ["a cat"],
                               "to_prompt": "a dog", "inversion": inversion, "refine": 4, "steps": 8,
                               "guidance": {"scale": 3.0}}))
        grid = r.arrays["grid"]
        assert grid.shape == (3, *imgs.shape) and np.isfinite(grid).all()
        assert not np.array_equal(grid[1], grid[2])  # the edit is not the reconstruction
        mse[inversion] = r.summary["latent_mse"]
    assert mse["refined"] <= mse["naive"] * 1.01, mse


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_schedule_search_under_a_prompt_at_a_size(folders, name, tmp_path):
    """GITS under a prompt and guidance at 32×16, stored as schedule.json (with what it was searched under) and
    sampled by name with spacing: optimised."""
    import shutil

    from ddim.api import parse_request, run
    from ddim.io.loader import load_model
    from ddim.io.schedule_file import FILE, search_for_model, write_schedule

    folder = tmp_path / name
    shutil.copytree(folders[name], folder)
    m = load_model(str(folder))
    r, searched = search_for_model(m, 3, "ddim", "gits", 2, prompt="a cat", guidance=2.0, size=(16, 32),
                                   candidates=12)
    assert searched == {"size": "32x16", "prompt": "a cat", "guidance": 2.0}
    write_schedule(folder / FILE, m.denoiser, r, "gits", 2, searched)
    stored = json.loads((folder / FILE).read_text())
    assert stored["calibration"]["prompt"] == "a cat" and stored["steps"] == 3
    res = run(parse_request({"task": "sample", "model": str(folder), "prompt": ["a cat"], "n": 1, "seed": 0,
                             "spacing": "optimised", "sampler": "ddim", "size": [16, 32]}))
    assert res.arrays["samples"].shape == (1, 3, 16, 32)
    assert res.provenance["plan"]["timesteps"] == pytest.approx(stored["timesteps"])
    with pytest.raises(UsageError, match="--prompt"):
        search_for_model(load_model("digits"), 3, "ddim", "gits", 2, prompt="a cat")


def test_schedule_command_on_a_folder(folders, tmp_path, capsys):
    from ddim.app.cli import main

    out = tmp_path / "schedule.json"
    assert main(["schedule", "--model", str(folders["sd3"]), "--nfe", "2", "--sampler", "ddim", "--method", "gits",
                 "--n-cal", "2", "--prompt", "a cat", "--size", "16x16", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["calibration"]["size"] == "16x16"
    assert main(["schedule", "--model", "digits", "--prompt", "a cat", "--out", str(out)]) == 2
    assert "--prompt" in capsys.readouterr().err


@pytest.mark.parametrize("name", FORMATS)
def test_float16(folders, name):
    from ddim.api import parse_request, run

    out = run(parse_request({"task": "sample", "model": str(folders[name]), "prompt": ["a cat"], "n": 1, "seed": 1,
                             "steps": 2, "size": [16, 16], "dtype": "float16"})).arrays["samples"]
    assert out.shape == (1, 3, 16, 16) and np.isfinite(out).all()


def test_long_prompts_warn_or_are_refused(folders, capsys, tmp_path):
    from ddim.api import parse_request, run
    from ddim.app.cli import main

    long = "a very long prompt about a cat sitting on a mat in the sun"
    base = {"task": "sample", "model": str(folders["sd3"]), "n": 1, "seed": 0, "steps": 1, "size": [16, 16]}
    with pytest.warns(UserWarning, match="dropped"):
        run(parse_request({**base, "prompt": [long + " once"]}))
    for field, extra in (("prompt", {"prompt": ["a cat", long]}),
                         ("negative_prompt", {"prompt": ["a cat"], "negative_prompt": long})):
        with pytest.raises(UsageError, match=rf"request field {field}: .*too long .*truncated to \d+ tokens"):
            run(parse_request({**base, **extra, "prompt_truncation": "refuse"}))
    run(parse_request({**base, "prompt": ["a cat"], "prompt_truncation": "refuse"}))
    assert main(["sample", "--model", str(folders["sd3"]), "--prompt", long, "--prompt-truncation", "refuse",
                 "-n", "1", "--steps", "1", "--size", "16x16", "--out", str(tmp_path / "x.npy")]) == 2
    assert "too long" in capsys.readouterr().err


def test_speed_and_reconstruction_benches_on_flow_folders(folders, tmp_path):
    """`ddim bench speed` beside FluxPipeline (Euler rows in both, ours-only DPM-Solver rows) and the SD3
    reconstruction table, at a size given on the command line (the code is one for every format)."""
    from ddim.app.cli import main

    assert main(["bench", "speed", "--model", str(folders["flux"]), "--quick", "--size", "16x16",
                 "--out", str(tmp_path / "speed")]) == 0
    text = (tmp_path / "speed" / "report.md").read_text()
    assert "FluxPipeline" in text and "FlowMatchEulerDiscreteScheduler" in text and "| dpmpp_2m | 4 | — |" in text
    assert main(["bench", "reconstruction", "--model", str(folders["sd3"]), "--quick", "--size", "16x16",
                 "--out", str(tmp_path / "rec")]) == 0
    assert "| 10 | 7.5 |" in (tmp_path / "rec" / "report.md").read_text()
    assert main(["bench", "quality", "--size", "16x16", "--quick", "--out", str(tmp_path / "q")]) == 2


def _sdxl_samplers():
    from ddim.core.samplers import SAMPLERS

    return sorted(SAMPLERS)


@pytest.mark.parametrize("sampler", _sdxl_samplers())
def test_every_sampler_runs_on_sdxl(folders, sampler):
    """Each sampler, a few steps under CFG on the SDXL folder through the request API (SD3 and Flux: in
    tests/test_sd3_flux.py)."""
    from ddim.api import parse_request, run

    req = parse_request({"task": "sample", "model": str(folders["sdxl"]), "prompt": ["a cat"], "n": 1, "seed": 1,
                         "steps": 3, "sampler": sampler, "size": [16, 16], "guidance": {"scale": 3.0}})
    img = run(req).arrays["samples"]
    assert img.shape == (1, 3, 16, 16) and np.isfinite(img).all()


@pytest.mark.parametrize("name, part, cls, says", [
    ("flux", "transformer", "SD3Transformer2DModel", r"transformer: expected FluxTransformer2DModel, found SD3"),
    ("sd3", "text_encoder_3", "CLIPTextModel", r"text_encoder_3: supported text encoders are T5EncoderModel"),
    ("sdxl", "unet", "UNet2DModel", r"unet: expected UNet2DConditionModel, found UNet2DModel")])
def test_a_part_of_the_wrong_class_is_named(folders, tmp_path, name, part, cls, says):
    import shutil

    from ddim.io.loader import load_model

    broken = tmp_path / name
    shutil.copytree(folders[name], broken)
    cfg_file = broken / part / "config.json"
    cfg = json.loads(cfg_file.read_text())
    key = "architectures" if "architectures" in cfg else "_class_name"
    cfg[key] = [cls] if key == "architectures" else cls
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match=says):
        load_model(str(broken))

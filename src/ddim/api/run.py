"""`run(request, store)`: the one entry point every front end calls. It resolves the model's defaults (sampling
table, distilled students, schedule.json, shift), the condition and guidance, runs the task through the ops
and returns a `Result`: arrays, the run's counts and provenance (request, model fingerprint, versions)."""

from __future__ import annotations

import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.errors import UsageError
from ..core.guidance import Guidance
from ..core.prediction import fixed_rows
from ..core.run import RunStats, StepInfo
from ..core.sample import invariant, resolve_timesteps
from ..core.samplers import get_sampler
from ..models.contract import Model, SamplingPlan
from .request import GuidanceSpec, check_sampler_options
from .store import ModelStore

_DEFAULT_STORE = ModelStore()
_NO_GUIDANCE = GuidanceSpec().model_dump()
#: tasks built on DDIM inversion: their sampler is DDIM (η = 0)
_INVERSION_TASKS = ("invert", "reconstruct", "edit", "interpolate", "likelihood")


@dataclass(frozen=True)
class Preview:
    """x̂0 decoded to images after step `step` of `steps`, and the state x_t as the sampler holds it (`states`
    decodes it on demand, so a latent model's VAE runs for x_t only for a consumer that shows it)."""

    step: int
    steps: int
    images: torch.Tensor
    state: torch.Tensor | None = None
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def states(self) -> torch.Tensor | None:
        if self.state is None or self.decode is None:
            return self.state
        return self.decode(self.state)


@dataclass
class Result:
    """What a run returns: its arrays (`output` names the main one), counts, provenance and a summary."""

    task: str
    output: str
    arrays: dict[str, np.ndarray]
    stats: RunStats
    provenance: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def main(self) -> np.ndarray:
        return self.arrays[self.output]


def versions() -> dict[str, str]:
    import diffusers

    from .. import __version__

    return {"ddim": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def run(request: Any, store: ModelStore | None = None, *, preview: Callable[[Preview], None] | None = None,
        shards: Path | None = None, dist: Any = None, progress: bool = False,
        on_step: Callable[[int, int], None] | None = None) -> Result:
    """Run a validated request (`parse_request`) against the models of `store`. `preview` receives decoded x̂0
    every `request.preview_every` steps; `shards` is the folder for resumable sharded sampling (samples above
    `request.batch`, or under torchrun with `dist`); `on_step(i, steps)` follows the sampler. Off rank 0 of a
    torchrun job, the result's arrays are empty."""
    store = store or _DEFAULT_STORE
    model = store.get(request.model, request.device, request.dtype, request.compile)
    t0 = time.perf_counter()
    handler = _TASKS[request.task]
    with torch.no_grad():
        ctx = _Ctx(preview, shards, dist, progress, on_step)
        out, arrays, summary, labels, stats, plan = handler(request, model, ctx)
    seconds = time.perf_counter() - t0
    prov = {"request": request.model_dump(mode="json"), "model": {"name": model.name, "format": model.format,
                                                                   "fingerprint": model.fingerprint},
            "plan": {"sampler": plan.sampler, "spacing": plan.spacing, "steps": plan.steps,
                     "timesteps": None if plan.timesteps is None else plan.timesteps.tolist(),
                     "chunk": plan.denoiser.fixed_rows},
            "versions": versions()}
    return Result(request.task, out, arrays, stats, prov, summary, labels, seconds)


@dataclass(frozen=True)
class _Ctx:
    preview: Callable[[Preview], None] | None
    shards: Path | None
    dist: Any
    progress: bool
    on_step: Callable[[int, int], None] | None = None


# ------------------------------------------------------------------------------------------ resolution
def resolve_plan(req: Any, model: Model, inputs: torch.Tensor | None = None) -> SamplingPlan:
    """The run's denoiser, sampler and step list after the model's defaults, the shift and batch invariance; at
    the request's size, or (latent models) the size of its input images."""
    sampler = req.sampler
    if req.task in _INVERSION_TASKS and sampler not in (None, "ddim"):
        raise UsageError(f"{req.task} runs DDIM (η = 0) inversion; sampler {sampler!r} is not used there")
    if req.spacing == "optimised":
        from ..io.schedule_file import FILE, read_schedule

        if model.folder is None:
            raise UsageError(f"{model.name} has no folder to hold a {FILE}")
        sampler, ts = read_schedule(model.folder / FILE, model.denoiser, sampler, None)
        plan = model.plan(len(ts), sampler, timesteps=ts)
    else:
        plan = model.plan(req.steps, sampler if req.task not in _INVERSION_TASKS else "ddim", req.spacing,
                          req.timesteps)
    den = plan.denoiser
    sized = inputs is not None and model.codec is not None
    try:
        shape = model.shape_for(tuple(inputs.shape[-2:]) if sized else getattr(req, "size", None))
    except UsageError as e:
        raise UsageError(f"request field {'data' if sized else 'size'}: {e}") from None
    if shape != model.sample_shape:  # before the step list: a dynamic flow shift follows the size
        den = den.replace(sample_shape=shape)
    if req.shift is not None:
        den = den.replace(path=den.path.with_shift(req.shift))
    den = invariant(den, req.batch_invariant)
    try:
        check_sampler_options(plan.sampler, req.options)
    except ValueError as e:
        raise UsageError(f"request field options: {e}") from None
    try:  # the guidance settings and their fit with the sampler, before any step runs
        get_sampler(plan.sampler).check_guidance_rule(guidance_of(req, model).rule)
    except UsageError as e:
        raise UsageError(f"request field guidance: {e}") from None
    ts = plan.timesteps if plan.timesteps is not None else resolve_timesteps(den, plan.steps, plan.spacing, None)
    return SamplingPlan(den, plan.sampler, plan.spacing, len(ts), ts)


def guidance_of(req: Any, model: Model) -> Guidance:
    """The request's guidance with the model's default scale; rule options under their rule's names."""
    g = req.guidance
    return Guidance(model.defaults.guidance if g.scale is None else g.scale, rule=g.rule, rescale=g.rescale,
                    interval=g.interval, options=dict(g.options), batched=not g.two_calls)


def _cycled(values: list, n: int) -> list:
    return [values[i % len(values)] for i in range(n)]


def check_condition(req: Any, model: Model) -> None:
    """Prompts only for text-to-image models, classes only for class-conditional ones, and guidance only where
    there is a condition to guide by (checked before a run starts, so a server refuses it at submission)."""
    if req.prompt is not None and model.condition_kind != "prompt":
        raise UsageError(f"request field prompt: {model.name} takes no prompts (a text-to-image folder does)")
    if req.classes is not None and model.condition_kind != "class":
        what = "prompts, not classes" if model.condition_kind == "prompt" else "no classes (it is unconditional)"
        raise UsageError(f"request field classes: {model.name} takes {what}")
    if model.condition_kind != "prompt" and req.classes is None and not _labelled_data(req, model):
        _no_guidance(req, guidance_of(req, model))
    if req.prompt_truncation == "refuse" and model.condition_kind == "prompt":
        _refuse_long_prompts(req, model)
    distilled = model.defaults.distilled_guidance is not None
    if req.guidance.distilled is not None and not distilled:
        raise UsageError(f"request field guidance.distilled: {model.name} is not guidance-distilled (it takes no "
                         "guidance input); use guidance.scale (classifier-free)")
    if distilled and req.guidance.rule == "cfg++":
        raise UsageError(f"request field guidance.rule: cfg++ renoises with the unconditional prediction, which "
                         f"{model.name} (guidance-distilled) does not make; use cfg (true CFG) or apg")
    if getattr(req, "score", False) and tuple(model.image_shape) != (1, 8, 8):
        raise UsageError(f"request field score: the score is the digit classifier's, for 8×8 digit models; "
                         f"{model.name} makes {'×'.join(map(str, model.image_shape))} images")


def _refuse_long_prompts(req: Any, model: Model) -> None:
    """prompt_truncation "refuse": every prompt of the request (prompt, negative_prompt, to_prompt) must fit every
    text encoder whole."""
    for name in ("prompt", "negative_prompt", "to_prompt"):
        value = getattr(req, name, None)
        for i, p in enumerate([value] if isinstance(value, str) else value or []):
            cut = model.encoder.truncations(p)
            if cut:
                where = f"{name}[{i}]" if name == "prompt" else name
                raise UsageError(f"request field {name}: {where} is too long ({cut[0]}); shorten it or set "
                                 "prompt_truncation to warn")


def _labelled_data(req: Any, model: Model) -> bool:
    """Whether a class model's data rows bring their own labels (a built-in labelled dataset)."""
    data = getattr(req, "data", None)
    return model.condition_kind == "class" and data is not None and not data.endswith((".npy", ".npz")) \
        and not data.startswith("data:")


def _no_guidance(req: Any, g: Guidance) -> None:
    """Refuse guidance settings (`g`: the request's, with the model's default scale) on a run without a condition."""
    unused = {k: v for k, v in req.guidance.model_dump().items() if k != "scale" and v != _NO_GUIDANCE[k]}
    if unused or (req.guidance.scale is not None and not g.trivial):
        raise UsageError("request field guidance: guidance needs classes (a class-conditional model) or a prompt "
                         "(a text-to-image model)")


def conditioning(req: Any, model: Model, n: int, labels: torch.Tensor | None = None) -> dict[str, Any]:
    """condition / uncond / guidance keyword arguments for n samples (labels: the rows' own classes)."""
    g = guidance_of(req, model)
    check_condition(req, model)
    if model.condition_kind == "prompt":
        prompts, dg, neg = _cycled(req.prompt or [""], n), req.guidance.distilled, req.negative_prompt
        if neg is None and dg is not None:  # the null branch takes the same distilled scale
            neg = ""
        unc = model.condition([neg] * n, dg) if neg is not None else None
        return {"condition": model.condition(prompts, dg), "uncond": unc, "guidance": g}
    cond = torch.tensor(_cycled(req.classes, n)) if req.classes is not None else labels
    if cond is None:
        _no_guidance(req, g)
        return {}
    return {"condition": cond, "guidance": g}


def input_rows(req: Any, model: Model) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The request's data rows as images, and their labels when a class model encodes labelled data."""
    from ..io.inputs import input_labels, load_inputs

    try:  # a latent model's size is checked by resolve_plan at the rows' size
        x = load_inputs(req.data, model.input_shape(), index=req.index, n=req.n)
    except UsageError as e:
        raise UsageError(f"request field data: {e}") from None
    labels = None
    if req.classes is None and _labelled_data(req, model):
        labels = input_labels(req.data, index=req.index, n=req.n)
    return x, labels


def _preview_callback(req: Any, model: Model, ctx: _Ctx, steps: int) -> Callable[[StepInfo], None] | None:
    """The sampler's per-step callback: progress (`on_step`) every step, decoded x̂0 every `preview_every`."""
    k = req.preview_every if ctx.preview is not None else None
    if k is None and ctx.on_step is None:
        return None

    def cb(info: StepInfo) -> None:
        if ctx.on_step is not None:
            ctx.on_step(info.i + 1, steps)
        if k is not None and info.denoised is not None and ((info.i + 1) % k == 0 or info.i + 1 == steps):
            ctx.preview(Preview(info.i + 1, steps, _decode(model, info.denoised, None), info.x,
                                lambda z: _decode(model, z, None)))
    return cb


def _sampling_kw(req: Any, plan: SamplingPlan) -> dict[str, Any]:
    return {"sampler": plan.sampler, "timesteps": plan.timesteps, **req.options}


def _codec_chunk(invariant: Any, n: int) -> int | None:
    """Rows per VAE call: one under batch invariance (exactly invariant, and no padding of a costly network),
    else up to 64."""
    return 1 if invariant else (64 if n > 64 else None)


def _decode(model: Model, z: torch.Tensor, invariant: Any) -> torch.Tensor:
    """Latents → images (the VAE is a batched network too: fixed-size calls under batch invariance)."""
    return z if model.codec is None else fixed_rows(model.decode, z, _codec_chunk(invariant, z.shape[0]))


def _encode(model: Model, images: torch.Tensor, invariant: Any) -> torch.Tensor:
    return images if model.codec is None else fixed_rows(model.encode, images, _codec_chunk(invariant,
                                                                                           images.shape[0]))


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


# ----------------------------------------------------------------------------------------------- tasks
def _sample(req: Any, model: Model, ctx: _Ctx):
    from ..core.sample import sample
    from ..io.sharding import draw

    plan = resolve_plan(req, model)
    den, shape = plan.denoiser, model.shape_for(req.size)
    kw = {**_sampling_kw(req, plan), **conditioning(req, model, req.n)}
    cb = _preview_callback(req, model, ctx, plan.steps)
    device = den.device()
    if req.seeds is not None:
        if req.n > req.batch:
            raise UsageError(f"a seeds list is sampled in one batch: give at most batch={req.batch} seeds")
        z, stats = sample(den, (req.n, *shape), seeds=req.seeds, return_stats=True,
                          callback=cb, progress=ctx.progress, device=device, **kw)
        z = _np(z)
    else:
        if ctx.shards is None and ctx.dist is not None and ctx.dist.active:
            raise UsageError("a torchrun job needs a shared shard folder: pass shards=")
        with tempfile.TemporaryDirectory() as tmp:  # shards go to ctx.shards (resumable) or a scratch folder
            z, stats = draw(den, shape, req.n, batch=req.batch, seed=req.seed,
                            shard_folder=ctx.shards or Path(tmp) / "shards", dist=ctx.dist, progress=ctx.progress,
                            callback=cb, device=device, **kw)
    if z is None:  # another torchrun rank: rank 0 holds the samples
        return "samples", {}, {}, [], stats, plan
    images = _np(_decode(model, torch.from_numpy(z).to(device), den.fixed_rows)) if model.codec is not None else z
    summary = {"quality": digit_scores(images, req.classes, req.n)} if req.score else {}
    return "samples", {"samples": images}, summary, [], stats, plan


def digit_scores(images: np.ndarray, classes: list[int] | None, n: int) -> dict[str, float]:
    """The benchmarks' digit-classifier scores of a few samples (FD is biased upwards at small n: compare
    configurations at equal n and seeds, as the explorer does)."""
    from ..bench.classifier import judge

    labels = torch.tensor(_cycled(classes, n)) if classes else None
    return judge().score(torch.from_numpy(images).float(), labels)


def _img2img(req: Any, model: Model, ctx: _Ctx):
    from ..ops.editing import sdedit

    images, labels = input_rows(req, model)
    plan = resolve_plan(req, model, images)
    x0 = _encode(model, images, plan.denoiser.fixed_rows)
    kw = conditioning(req, model, len(x0), labels)
    out, stats = sdedit(plan.denoiser, x0, req.strength, timesteps=plan.timesteps, sampler=plan.sampler,
                        seed=req.seed, return_stats=True, callback=_preview_callback(req, model, ctx, plan.steps),
                        **req.options, **kw)
    samples = _np(_decode(model, out, plan.denoiser.fixed_rows))
    return "samples", {"samples": samples, "inputs": _np(images)}, {}, [], stats, plan


def _invert(req: Any, model: Model, ctx: _Ctx):
    from ..core.sample import sample
    from ..ops.inversion import invert, normality

    images, labels = input_rows(req, model)
    plan = resolve_plan(req, model, images)
    x0 = _encode(model, images, plan.denoiser.fixed_rows)
    kw = conditioning(req, model, len(x0), labels)
    z, stats = invert(plan.denoiser, x0, timesteps=plan.timesteps, refine=req.refine, return_stats=True, **kw)
    rec, st2 = sample(plan.denoiser, x_T=z, timesteps=plan.timesteps, return_stats=True, progress=ctx.progress,
                      callback=_preview_callback(req, model, ctx, plan.steps), **kw)
    stats.nfe += st2.nfe
    rec_img = _decode(model, rec, plan.denoiser.fixed_rows)
    summary = {"mse": float((rec - x0).pow(2).mean()), "data_var": float(x0.var()), **normality(z),
               "image_mse": float((rec_img - images).pow(2).mean())}
    arrays = {"encodings": _np(z), "reconstruction": _np(rec_img), "inputs": _np(images)}
    return ("encodings" if req.task == "invert" else "reconstruction"), arrays, summary, [], stats, plan


def _edit(req: Any, model: Model, ctx: _Ctx):
    from ..ops.editing import sdedit, swap_condition
    from ..ops.latent import edit

    images, labels = input_rows(req, model)
    plan = resolve_plan(req, model, images)
    x0 = _encode(model, images, plan.denoiser.fixed_rows)
    den = plan.denoiser
    if req.to_prompt is not None or req.to_class is not None:
        if req.to_prompt is not None and model.condition_kind != "prompt":
            raise UsageError(f"{model.name} takes no prompts: use to_class or a direction")
        if req.to_class is not None and model.condition_kind != "class":
            raise UsageError(f"{model.name} is not class-conditional: to_class needs a class-conditional model")
        src = conditioning(req, model, len(x0), labels)
        if "condition" not in src:
            raise UsageError("give classes (the source class) for inputs without labels")
        target = model.condition([req.to_prompt] * len(x0)) if req.to_prompt is not None else \
            torch.tensor([req.to_class] * len(x0))
        g = src["guidance"]
        r = swap_condition(den, x0, src["condition"], target, timesteps=plan.timesteps, guidance=g,
                           inversion=req.inversion, refine=req.refine)
        to = repr(req.to_prompt[:20]) if req.to_prompt is not None else str(req.to_class)
        labels_out, outs = ["real", "reconstruction", f"→ {to}"], [x0, r.reconstruction, r.edited]
        for s in req.strength or []:
            outs.append(sdedit(den, x0, s, condition=target, guidance=g, timesteps=plan.timesteps, seed=req.seed))
            labels_out.append(f"SDEdit {s:g}")
        grid = torch.stack([_decode(model, o, den.fixed_rows) for o in outs])
        summary = {"mse": float((grid[1] - images).pow(2).mean()), "guidance": g.scale}
        if model.codec is not None:  # the inversion's own error, without the VAE's round trip
            summary["latent_mse"] = float((r.reconstruction - x0).pow(2).mean())
        return "grid", {"grid": _np(grid)}, summary, labels_out, RunStats(), plan
    if req.strength is not None or req.to_prompt is not None:
        raise UsageError("strength needs to_class or to_prompt (the condition to edit towards)")
    if model.codec is not None:
        raise UsageError(f"{model.name}: direction edits are for pixel models; use to_prompt")
    from ..io.inputs import load_direction

    spec = req.direction or "class:3-8"
    kw = conditioning(req, model, len(x0), labels)
    direction = load_direction(spec, den, model.sample_shape, examples=req.examples, timesteps=plan.timesteps)
    outs = edit(den, x0, direction, req.scales, timesteps=plan.timesteps, refine=req.refine, **kw)
    return "grid", {"grid": _np(outs)}, {"direction": spec}, [f"{s:g}" for s in req.scales], RunStats(), plan


def _interpolate(req: Any, model: Model, ctx: _Ctx):
    from ..core.noise import SeededNoise
    from ..ops.latent import interpolate

    if req.endpoints is not None:
        plan = resolve_plan(req, model)
        ends = SeededNoise(list(req.endpoints), model.sample_shape).initial().to(plan.denoiser.device())
        encode, labels = False, None
    else:
        images, labels = input_rows(req, model)
        plan = resolve_plan(req, model, images)
        ends, encode = _encode(model, images, plan.denoiser.fixed_rows), True
    kw = conditioning(req, model, 1, None if labels is None else labels[:1])
    xs = interpolate(plan.denoiser, ends[:1], ends[1:], req.n, method=req.method, encode=encode,
                     timesteps=plan.timesteps, refine=req.refine, **kw)
    return "frames", {"frames": _np(_decode(model, xs, plan.denoiser.fixed_rows))}, {}, [], RunStats(), plan


def _likelihood(req: Any, model: Model, ctx: _Ctx):
    from ..ops.likelihood import log_likelihood

    if model.codec is not None:
        raise UsageError(f"{model.name}: likelihoods are computed for pixel models")
    x, labels = input_rows(req, model)
    plan = resolve_plan(req, model, x)
    x = x.double() if req.float64 else x
    kw = conditioning(req, model, len(x), labels)
    ll = log_likelihood(plan.denoiser, x, exact=req.exact, probes=req.probes, bits_per_dim=req.bits_per_dim, **kw)
    true = model.exact_log_likelihood(x, bits_per_dim=req.bits_per_dim)
    summary = {"mean": float(ll.mean()), "std": float(ll.std()) if ll.numel() > 1 else 0.0,
               "unit": "bits/dim" if req.bits_per_dim else "nats",
               "true_mean": None if true is None else float(true.mean())}
    return "loglik", {"loglik": _np(ll)}, summary, [], RunStats(), plan


_TASKS: dict[str, Callable[[Any, Model, _Ctx], tuple]] = {
    "sample": _sample, "img2img": _img2img, "invert": _invert, "reconstruct": _invert, "edit": _edit,
    "interpolate": _interpolate, "likelihood": _likelihood,
}

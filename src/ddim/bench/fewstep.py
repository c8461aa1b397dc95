"""`ddim bench fewstep`: class-balanced FD at 1 / 2 / 4 / 8 / 10 / 20 NFE on digits for ODE samplers (spacing
chosen per NFE on a calibration seed set), GITS-searched schedules, the progressive-distilled model, optionally a
consistency-distilled and a reflowed model, and DDPM-1000 and the floor — pooled over seed sets, one figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.sample import sample
from ..core.samplers import SAMPLERS
from ..io import plots
from .report import header

SEED_STRIDE = 10**6
CAL_SEED = 9 * SEED_STRIDE
SPACINGS = ("trailing", "time_quadratic", "logsnr", "karras")
#: a reflowed flow model's candidates: samplers and the spacings of a continuous path
FLOW_SAMPLERS = ("ddim", "midpoint", "dpmpp_2m", "unipc")
FLOW_SPACINGS = ("uniform", "karras", "flow_shift")
#: samplers whose step list is tuned for FD on a reflowed model
FD_TUNED_SAMPLERS = ("ddim", "dpmpp_2m", "unipc")
#: rows that sample a model shipped with the package whatever the flags
SHIPPED_METHODS = ("progressive-distilled",)
#: the shipped one-step model (digits-rectified distilled at t = 1), sampled as it samples by default
ONE_STEP_MODEL = "digits-rectified-1step"


def _draw(den: Any, n: int, seeds: int, **kw: Any) -> list[torch.Tensor]:
    with torch.no_grad():
        return [sample(den, (n, *den.sample_shape), seeds=range(k * SEED_STRIDE, k * SEED_STRIDE + n), **kw)
                for k in range(seeds)]


def _calibrated(judge: Any, den: Any, nfe: int, candidates: list[tuple[str, str]], n_cal: int
                ) -> tuple[str, str, int] | None:
    """The (sampler, spacing, steps) among `candidates` with the lowest class-balanced FD at `nfe` network calls
    on the calibration seed set (never the reported one); None when no candidate fits the budget."""
    scores: dict[tuple[str, str, int], float] = {}
    for name, sp in candidates:
        steps = SAMPLERS[name].steps_for_nfe(nfe)
        if SAMPLERS[name].nfe(steps) <= nfe:
            x = sample(den, (n_cal, *den.sample_shape), steps=steps, sampler=name, spacing=sp,
                       seeds=range(CAL_SEED, CAL_SEED + n_cal))
            scores[(name, sp, steps)] = judge.score(x)["fd_bal"]
    return min(scores, key=scores.get) if scores else None


def fd_tuned_schedule(judge: Any, den: Any, nfe: int, sampler: str, n_cal: int, start: str = "karras",
                      delta: float = 0.08, tol: float = 0.005) -> tuple[list[float], float]:
    """A continuous path's step list for `nfe` calls of `sampler`, tuned for the class-balanced FD itself on the
    calibration seed set (never the reported one): coordinate descent on the interior levels from `start`
    spacing, each moved by ±δ while the list stays decreasing, δ halved when a round brings nothing, down to
    `tol`. Returns the levels and their calibration FD."""
    steps = SAMPLERS[sampler].steps_for_nfe(nfe)

    def fd(ts: list[float]) -> float:
        x = sample(den, (n_cal, *den.sample_shape), timesteps=torch.tensor(ts, dtype=torch.float64),
                   sampler=sampler, seeds=range(CAL_SEED, CAL_SEED + n_cal))
        return judge.score(x)["fd_bal"]

    cur = den.path.timesteps(steps, start).tolist()
    best = fd(cur)
    while delta >= tol:
        improved = False
        for j in range(1, len(cur)):
            for move in (delta, -delta):
                cand = list(cur)
                cand[j] += move
                low = cand[j + 1] if j + 1 < len(cand) else den.path.t_min
                if low < cand[j] < cand[j - 1] and (f := fd(cand)) < best - 1e-3:
                    cur, best, improved = cand, f, True
                    break
        if not improved:
            delta /= 2
    return [round(t, 4) for t in cur], best


def fewstep_bench(out: Path, quick: bool, command: str, n: int | None = None, seeds: int = 3,
                  consistency: str | None = None, reflowed: str | None = None, meanflow: str | None = None) -> str:
    """The few-step table; `consistency` adds a consistency-distilled model (`ddim distill --method consistency`)
    sampled with its LCM sampler, `reflowed` a reflowed flow model (`ddim reflow`) with the sampler and spacing
    chosen per NFE on the calibration seed set, `meanflow` a MeanFlow model sampled as it samples by default
    (n uniform steps of its average velocity)."""
    from tqdm.auto import tqdm

    from ..io.data import load as load_data
    from ..io.loader import load_model
    from ..ops.optimize import search_schedule
    from .classifier import DigitsJudge

    n = n or (48 if quick else 1700)
    n_cal = 48 if quick else 500
    nfes = (1, 2, 4) if quick else (1, 2, 4, 8, 10, 20)
    judge = DigitsJudge()
    base = load_model("digits").denoiser
    rows: list[dict[str, Any]] = []

    from ..io.loader import BUILTIN_MODELS

    def add(method: str, nfe: int, xs: list[torch.Tensor], detail: str, model: str | None = None) -> None:
        rows.append({"method": method, "nfe": nfe, "detail": detail, "shipped": model in BUILTIN_MODELS,
                     **judge.pooled(xs)})

    with torch.no_grad():
        for name in tqdm(("ddim", "dpmpp_2m", "unipc"), desc="samplers"):
            for nfe in nfes:
                _, sp, steps = _calibrated(judge, base, nfe, [(name, sp) for sp in SPACINGS], n_cal)
                add(name, nfe, _draw(base, n, seeds, steps=steps, sampler=name, spacing=sp), sp)
        for nfe in [v for v in nfes if v in ((4,) if quick else (4, 10))]:
            r = search_schedule(base, nfe, "unipc", method="gits+cd" if not quick else "gits",
                                n_cal=64 if quick else 256)
            add("unipc + GITS", nfe, _draw(base, n, seeds, timesteps=r.timesteps, sampler="unipc"),
                "[" + ", ".join(str(int(t)) for t in r.timesteps.tolist()) + "]")
            r = search_schedule(base, nfe, "unipc", method="ays", n_cal=64 if quick else 512,
                                x_data=load_data("digits"))
            add("unipc + AYS", nfe, _draw(base, n, seeds, timesteps=r.timesteps, sampler="unipc"),
                "[" + ", ".join(str(int(t)) for t in r.timesteps.tolist()) + "]")
        dist = load_model("digits-distilled")
        for k in (1, 2, 4):
            add("progressive-distilled", k, _draw(dist.denoiser_for(k), n, seeds, steps=k, spacing="trailing"),
                "v-prediction student, DDIM")
        p = load_model(ONE_STEP_MODEL).plan(1)
        add("rectified, one-step distilled", 1, _draw(p.denoiser, n, seeds, steps=1, sampler=p.sampler,
                                                     spacing=p.spacing), f"{p.sampler}, one step from t = 1",
            ONE_STEP_MODEL)
        if consistency is not None:
            cd = load_model(consistency).denoiser
            for k in (1, 2, 4, 8):
                add("consistency-distilled", k, _draw(cd, n, seeds, steps=k, sampler="lcm", spacing="lcm"),
                    "LCM sampler, lcm spacing")
        if reflowed is not None:
            rf = load_model(reflowed).denoiser
            for k in [v for v in nfes if v <= 8]:
                name, sp, steps = _calibrated(judge, rf, k, [(a, b) for a in FLOW_SAMPLERS for b in FLOW_SPACINGS],
                                              n_cal)
                add("reflowed flow", k, _draw(rf, n, seeds, steps=steps, sampler=name, spacing=sp),
                    f"{name}, {sp} spacing, {steps} steps", reflowed)
            for k in [v for v in nfes if v in ((4,) if quick else (2, 4))]:
                tuned = {s: fd_tuned_schedule(judge, rf, k, s, n_cal, tol=0.04 if quick else 0.005)
                         for s in (("unipc",) if quick else FD_TUNED_SAMPLERS)}
                name = min(tuned, key=lambda s: tuned[s][1])
                ts = tuned[name][0]
                xs = _draw(rf, n, seeds, timesteps=torch.tensor(ts, dtype=torch.float64), sampler=name)
                add("reflowed flow, FD-tuned schedule", k, xs, f"{name}, levels {ts}", reflowed)
        if meanflow is not None:
            mf = load_model(meanflow)
            for k in [v for v in nfes if v <= 8]:
                p = mf.plan(k)
                add("MeanFlow", k, _draw(p.denoiser, n, seeds, steps=p.steps, sampler=p.sampler, spacing=p.spacing),
                    f"{p.sampler}, {p.spacing} spacing, {p.steps} steps of u(z, t − 1/{k}, t)", meanflow)
        ddpm_steps = 50 if quick else 1000
        add(f"DDPM-{ddpm_steps}", ddpm_steps,
            _draw(base, n, seeds, steps=ddpm_steps, sampler="ddpm", spacing="trailing"), "ancestral, σ² = β̃")
    ref = rows[-1]["fd_bal"]
    lines = [header("Few-step sampling on digits", command),
             f"Class-balanced FD (and plain FD) in the shipped classifier's features, {n * seeds} samples per cell "
             f"pooled over {seeds} seed sets of {n}; spread: lowest–highest single seed set. "
             f"{judge.floor_text(n * seeds)} Samplers: the spacing is chosen per NFE on a "
             f"calibration seed set ({n_cal} samples, seeds 9·10⁶ + i) among {', '.join(SPACINGS)}. GITS: schedule "
             "searched on its own calibration batch (ODE error against the fine reference, not FD); AYS: the KL upper "
             "bound of Align Your Steps minimised by dynamic programming on 512 training digits (not FD). Distilled: "
             "`digits-distilled`, one student per step count; rectified, one-step distilled: the shipped "
             f"`{ONE_STEP_MODEL}` (`digits-rectified` fine-tuned at t = 1 on `digits-flow`'s ODE pairs), as its "
             "sampling.json samples it"
             + (f"; consistency-distilled: `{consistency}`" if consistency else "")
             + (f"; MeanFlow: `{meanflow}`" if meanflow else "")
             + (f"; reflowed flow: `{reflowed}` (one reflow of `digits-flow`, another model than the ε-model the "
                "other rows sample; its sampler and spacing chosen per NFE on the calibration seed set among "
                f"{', '.join(FLOW_SAMPLERS)} × {', '.join(FLOW_SPACINGS)}; FD-tuned schedule: its levels tuned by "
                "coordinate descent for class-balanced FD on the calibration seed set, the best of "
                f"{', '.join(FD_TUNED_SAMPLERS)} there, then drawn on the reported seeds)" if reflowed else "") + ".",
             "",
             "| method | NFE | class-balanced FD ↓ | × DDPM-1000 | FD ↓ | seed spread | spacing / schedule |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        sp = [c["fd_bal"] for c in r["seeds"]]
        lines.append(f"| {r['method']} | {r['nfe']} | {r['fd_bal']:.2f} | {r['fd_bal'] / ref:.2f} | {r['fd']:.2f} | "
                     f"{min(sp):.2f}–{max(sp):.2f} | {r['detail']} |")
    best = {nfe: min((r for r in rows if r["nfe"] == nfe), key=lambda r: r["fd_bal"]) for nfe in nfes}
    lines += ["", "Best per NFE: " + "; ".join(f"{k}: {v['method']} {v['fd_bal']:.2f} ({v['fd_bal'] / ref:.2f}×)"
                                                for k, v in best.items()) + "."]
    if 4 in best and 1 in best:
        shipped = [r for r in rows if r["method"] in SHIPPED_METHODS or r["shipped"]]
        goals = []
        for nfe, limit in ((4, 1.3), (1, 1.5)):
            cand = [r for r in shipped if r["nfe"] == nfe]
            top = min(cand, key=lambda r: r["fd_bal"]) if cand else None
            goals.append(f"{nfe} NFE ≤ {limit}× DDPM-1000 with a shipped model — " + (
                "n/a" if top is None else ("met" if top["fd_bal"] <= limit * ref else "not met")
                + f" ({top['method']}: {top['fd_bal'] / ref:.2f}×)"))
        lines.append("Targets: " + "; ".join(goals) + ".")
    series: dict[str, tuple[list[float], list[float]]] = {}
    for r in rows[:-1]:
        s = series.setdefault(r["method"], ([], []))
        s[0].append(r["nfe"])
        s[1].append(r["fd_bal"])
    fig = plots.curves(series, out / "fewstep.png", "NFE", "class-balanced FD", logx=True, logy=True,
                       title="digits: class-balanced FD against NFE", hline=ref, hline_label=rows[-1]["method"])
    lines.append(f"\n![FD against NFE]({fig.name})")
    return "\n".join(lines)

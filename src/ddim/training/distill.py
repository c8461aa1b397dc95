"""Progressive distillation (Salimans & Ho 2022, Alg. 2): a student learns two teacher DDIM steps in one,
halving the step count each round (N → N/2 → … → 1).

Round 0 re-parametrises the ε-teacher as a v-prediction student (v is well conditioned at every noise level;
an ε-student cannot express x̂0 at the highest noise level, where α ≈ 0.006). Each halving round: x_t from
data, two teacher DDIM steps t → t' → t'' on the 2N-step trailing grid (in the first round optionally more
steps of a higher-order solver on the original teacher, so its targets carry less discretisation error), and
the student's x̂0 target
x̃ = (x_t'' − (σ_t''/σ_t) x_t) / (α_t'' − (σ_t''/σ_t) α_t), the x̂0 that one DDIM step t → t'' needs to land
on the teacher (eq. 8), under the truncated-SNR weight max(α²/σ², 1). Each round is a folder with a diffusers
export; an interrupted distillation resumes at the first unfinished round.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch

from ..core.errors import UsageError
from ..core.prediction import affine_coefficients
from ..io import checkpoint as ck
from ..io.config import schedule_to_config
from ..io.data import load as load_data


def _coef(pred: str, abar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (k1, k2, k3, k4) with x̂0 = k1 x + k2 out, ε̂ = k3 x + k4 out (shapes (B,))."""
    rows = [affine_coefficients(pred, math.sqrt(a), math.sqrt(max(1 - a, 0.0))) for a in abar.tolist()]
    return tuple(torch.tensor(c, dtype=torch.float32) for c in zip(*rows))  # type: ignore[return-value]


def _b(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


def _out(net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    o = net(x, t)
    return o if isinstance(o, torch.Tensor) else o.sample


def _x0(net: torch.nn.Module, pred: str, x: torch.Tensor, t: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
    """The network's x̂0 at per-sample levels t (ᾱ_t)."""
    k1, k2, _, _ = _coef(pred, abar_t)
    return _b(k1, x) * x + _b(k2, x) * _out(net, x, t)


def _teacher_solve(net: torch.nn.Module, pred: str, x: torch.Tensor, levels: torch.Tensor, abar: torch.Tensor,
                   tables: dict[int, tuple[torch.Tensor, torch.Tensor]], start: torch.Tensor, steps: int,
                   solver: str) -> torch.Tensor:
    """Integrate the PF-ODE from x, sample b from entry start[b] of one decreasing list `levels` over `steps`
    entries, with the core's DDIM (η = 0) or DPM-Solver++(2M) coefficients of that list (`tables`, from
    `core.samplers.dpmpp.step_tables`; each sample's first step first order, as it has no history)."""
    x0_prev = None
    for j in range(steps):
        i = start + j
        t = levels[i]
        x0 = _x0(net, pred, x, t, abar[t])
        A, C = tables[1 if j == 0 or solver == "ddim" else 2]
        x_next = _b(A[i], x) * x + _b(C[i, 0], x) * x0
        if j > 0 and solver == "dpmpp_2m":
            x_next = x_next + _b(C[i, 1], x) * x0_prev
        x, x0_prev = x_next, x0
    return x


def teacher_tables(path: Any, levels: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The first- and second-order step tables of the teacher's list (the data after its last entry)."""
    from ..core.samplers.dpmpp import step_tables

    return {o: step_tables(path, levels.double(), o) for o in (1, 2)}


def _student_x0(student: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
    v = _out(student, x, t)
    return _b(abar_t.sqrt(), x) * x - _b((1 - abar_t).sqrt(), x) * v  # x̂0 = α x − σ v


def progressive_distill(teacher: str | Path, out: str | Path, *, start_steps: int = 64, final_steps: int = 1,
                        iters: int = 1000, batch_size: int = 128, lr: float = 2e-4, seed: int = 0,
                        data: str = "digits", teacher_solver: str = "ddim", teacher_substeps: int = 2,
                        progress: bool = True, log: Any = print) -> Path:
    """Distil `teacher` (an ε/x0/v model on a grid schedule) into v-prediction students for start_steps/2, …,
    final_steps DDIM steps. Writes OUT/round-K/diffusers for every K; returns OUT. The first halving round's
    targets come from the original teacher integrated over each student step with `teacher_substeps` steps of
    `teacher_solver` (ddim | dpmpp_2m; the paper's recipe: 2 DDIM steps); later rounds take 2 DDIM steps of
    the previous student."""
    from ..io.loader import load_model

    out = Path(out)
    tden = load_model(teacher).denoiser
    sched = tden.path
    if not sched.grid or not isinstance(tden.net, torch.nn.Module):
        raise UsageError("progressive distillation takes a trained network on a grid-time (β) schedule")
    if tden.conditioning is not None:
        raise UsageError("progressive distillation of conditional models is not supported")
    if start_steps & (start_steps - 1) or final_steps & (final_steps - 1) or not 1 <= final_steps < start_steps:
        raise UsageError("start_steps and final_steps must be powers of two with final_steps < start_steps")
    if teacher_solver not in ("ddim", "dpmpp_2m"):
        raise UsageError(f"teacher_solver must be ddim or dpmpp_2m, not {teacher_solver!r}")
    if teacher_substeps < 2:
        raise UsageError(f"teacher_substeps must be at least 2, not {teacher_substeps}")
    x_data = load_data(data)
    if tuple(x_data.shape[1:]) != tuple(tden.sample_shape or ()):
        raise UsageError(f"data {data} has sample shape {tuple(x_data.shape[1:])}, the teacher takes "
                         f"{tden.sample_shape}")
    abar = torch.cat([sched.alphas_cumprod.float(), torch.ones(1)])  # index T: the data (ᾱ = 1)
    settings = {"teacher": str(teacher), "start_steps": start_steps, "iters": iters, "batch_size": batch_size,
                "lr": lr, "seed": seed, "data": data, "teacher_solver": teacher_solver,
                "teacher_substeps": teacher_substeps}
    _check_settings(out, settings)
    original = copy.deepcopy(tden.net).eval().requires_grad_(False), tden.prediction_type
    teacher_net, teacher_pred = original
    g = torch.Generator().manual_seed(seed)
    student = copy.deepcopy(teacher_net).train().requires_grad_(True)
    # round 0: re-parametrise as v-prediction (student x̂0 = teacher x̂0 at every level)
    plan: list[int | None] = [None]
    n = start_steps
    while n > final_steps:
        n //= 2
        plan.append(n)
    for n_student in plan:
        name = "round-v" if n_student is None else f"round-{n_student}"
        folder = out / name
        if (folder / "diffusers" / "unet" / "diffusion_pytorch_model.safetensors").is_file():
            ck.load_state_into(student, folder / "diffusers" / "unet" / "diffusion_pytorch_model.safetensors")
            teacher_net, teacher_pred = copy.deepcopy(student).eval().requires_grad_(False), "v_prediction"
            log(f"{name}: done earlier, resuming after it")
            continue
        first = n_student == start_steps // 2
        if first:
            teacher_net, teacher_pred = original
        _round(student, teacher_net, teacher_pred, n_student, sched, abar, x_data, g, iters, batch_size, lr,
               progress, name, *((teacher_solver, teacher_substeps) if first else ("ddim", 2)))
        ck.export_diffusers(student, schedule_to_config(sched), folder / "diffusers",
                            {"prediction_type": "v_prediction", "clip_sample": False, "timestep_spacing": "trailing"})
        log(f"{name}: wrote {folder / 'diffusers'}")
        teacher_net, teacher_pred = copy.deepcopy(student).eval().requires_grad_(False), "v_prediction"
    return out


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Record a distillation's settings in OUT/distill.json; resuming with other settings is an error."""
    path = out / "distill.json"
    if path.is_file():
        old = ck.read_json(path)
        diff = sorted(k for k in settings if old.get(k) != settings[k])
        if diff:
            raise UsageError(f"{out} was distilled with other settings ({', '.join(diff)}): use a new --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    ck.atomic_write_json(path, settings)


def _round(student: torch.nn.Module, teacher: torch.nn.Module, teacher_pred: str, n_student: int | None,
           sched: Any, abar: torch.Tensor, x_data: torch.Tensor, g: torch.Generator, iters: int, batch: int,
           lr: float, progress: bool, name: str, solver: str = "ddim", substeps: int = 2) -> None:
    """One round: the student's x̂0 learns the target that `substeps` teacher steps (`solver`) imply."""
    T = sched.T
    if n_student is not None:  # the substeps·n trailing grid nests the student's n-step trailing grid
        t_teacher = torch.cat([sched.timesteps(substeps * n_student, "trailing").long(), torch.tensor([T])])
        tables = teacher_tables(sched, t_teacher[:-1])
    opt = torch.optim.AdamW(student.parameters(), lr=lr)
    it = range(iters)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=name)
    for step in it:
        idx = torch.randint(0, len(x_data), (batch,), generator=g)
        x0 = x_data[idx]
        noise = torch.randn(x0.shape, generator=g)
        if n_student is None:
            t = torch.randint(0, T, (batch,), generator=g)
        else:
            k = torch.randint(0, n_student, (batch,), generator=g)
            t = t_teacher[substeps * k]
        a_t = abar[t]
        x_t = _b(a_t.sqrt(), x0) * x0 + _b((1 - a_t).sqrt(), x0) * noise
        with torch.no_grad():
            if n_student is None:
                target = _x0(teacher, teacher_pred, x_t, t, a_t)
            else:
                x_end = _teacher_solve(teacher, teacher_pred, x_t, t_teacher, abar, tables, substeps * k, substeps,
                                       solver)
                a_e = abar[t_teacher[substeps * (k + 1)]]  # index T: the data
                ratio = ((1 - a_e) / (1 - a_t)).sqrt()  # σ_t''/σ_t
                target = (x_end - _b(ratio, x_t) * x_t) / _b(a_e.sqrt() - ratio * a_t.sqrt(), x_t)
        w = (a_t / (1 - a_t)).clamp(min=1.0)  # truncated SNR weighting
        err = (_student_x0(student, x_t, t, a_t) - target).pow(2).flatten(1).mean(1)
        loss = (w * err).mean()
        for grp in opt.param_groups:
            grp["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / iters))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise FloatingPointError(f"distillation loss became {lv} in {name} at step {step}")
        if progress and step % 20 == 0:
            it.set_postfix(loss=f"{lv:.4f}")
    student.eval()


def package(rounds: str | Path, out: str | Path, steps: tuple[int, ...] = (1, 2, 4)) -> Path:
    """One model folder from a distillation's rounds: the students for `steps` (the largest as unet/, the others
    as students/K/), with distilled.json naming which student serves which step count."""
    import shutil

    rounds, out = Path(rounds), Path(out)
    missing = [k for k in steps if not (rounds / f"round-{k}" / "diffusers").is_dir()]
    if missing:
        raise UsageError(f"{rounds} has no round for {missing} steps")
    top = max(steps)
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(rounds / f"round-{top}" / "diffusers", tmp)
    table = {str(top): "unet"}
    for k in steps:
        if k != top:
            (tmp / "students" / str(k)).mkdir(parents=True)
            shutil.copy(rounds / f"round-{k}" / "diffusers" / "unet" / "diffusion_pytorch_model.safetensors",
                        tmp / "students" / str(k) / "diffusion_pytorch_model.safetensors")
            table[str(k)] = f"students/{k}"
    ck.atomic_write_json(tmp / "distilled.json", {"steps": table, "sampler": "ddim", "spacing": "trailing",
                                                  "method": "progressive distillation (v-prediction students)"})
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def consistency_distill(teacher: str | Path, out: str | Path, *, skip: int = 20, iters: int = 3000,
                        batch_size: int = 128, lr: float = 1e-4, ema_decay: float = 0.95, huber_c: float = 0.03,
                        timestep_scaling: float = 10.0, seed: int = 0, data: str = "digits", progress: bool = True,
                        log: Any = print) -> Path:
    """Consistency distillation (Song et al. 2023, Alg. 2) in LCM's parametrisation: f(x, t) = c_skip(t) x +
    c_out(t) x̂0_θ(x, t) on the skip grid t_n = skip·n − 1, target f_θ⁻(x̂_{t_n}, t_n) with x̂_{t_n} one teacher
    DDIM step from x_{t_{n+1}}, the pseudo-Huber distance of iCT (Song & Dhariwal 2023) and an EMA target
    network θ⁻. Exports OUT/diffusers with an LCMScheduler config, so the `lcm` sampler is its default."""
    from ..core.samplers.consistency import lcm_boundary
    from ..io.loader import load_model

    out = Path(out)
    tden = load_model(teacher).denoiser
    sched = tden.path
    if not sched.grid or not isinstance(tden.net, torch.nn.Module) or tden.conditioning is not None:
        raise UsageError("consistency distillation takes an unconditional network on a grid-time (β) schedule")
    x_data = load_data(data)
    if tuple(x_data.shape[1:]) != tuple(tden.sample_shape or ()):
        raise UsageError(f"data {data} has sample shape {tuple(x_data.shape[1:])}, the teacher takes "
                         f"{tden.sample_shape}")
    T = sched.T
    grid = torch.arange(1, T // skip + 1) * skip - 1  # LCM's skip grid: 19, 39, …, 999
    levels = grid.flip(0)  # the teacher's DDIM list, 999 → 19 (t_n → t_{n−1} is one step of it)
    tables = teacher_tables(sched, levels)
    abar = sched.alphas_cumprod.float()
    pred = tden.prediction_type
    teacher = copy.deepcopy(tden.net).eval().requires_grad_(False)
    student = copy.deepcopy(tden.net).train().requires_grad_(True)
    target_net = copy.deepcopy(tden.net).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(student.parameters(), lr=lr)

    def f(net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        k1, k2, _, _ = _coef(pred, abar[t])
        x0 = _b(k1, x) * x + _b(k2, x) * _out(net, x, t)
        c_skip, c_out = lcm_boundary(t.float() * timestep_scaling)
        return _b(c_skip, x) * x + _b(c_out, x) * x0

    it = range(iters)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="consistency distillation")
    params, tparams = list(student.parameters()), list(target_net.parameters())
    for step in it:
        idx = torch.randint(0, len(x_data), (batch_size,), generator=g)
        x0 = x_data[idx]
        noise = torch.randn(x0.shape, generator=g)
        n = torch.randint(1, len(grid), (batch_size,), generator=g)
        t_hi, t_lo = grid[n], grid[n - 1]
        x_hi = _b(abar[t_hi].sqrt(), x0) * x0 + _b((1 - abar[t_hi]).sqrt(), x0) * noise
        with torch.no_grad():
            x_lo = _teacher_solve(teacher, pred, x_hi, levels, abar, tables, len(grid) - 1 - n, 1, "ddim")
            y = f(target_net, x_lo, t_lo)
        d = (f(student, x_hi, t_hi) - y).flatten(1)
        loss = ((d.pow(2).sum(1) + huber_c**2).sqrt() - huber_c).mean()  # pseudo-Huber (iCT)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(tparams, [p.detach() for p in params], 1 - ema_decay)
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise FloatingPointError(f"consistency distillation loss became {lv} at step {step}")
        if progress and step % 20 == 0:
            it.set_postfix(loss=f"{lv:.4f}")
    cfg = {**schedule_to_config(sched), "_class_name": "LCMScheduler", "original_inference_steps": T // skip,
           "timestep_scaling": timestep_scaling}
    ck.export_diffusers(student.eval(), cfg, out / "diffusers", {"prediction_type": pred, "clip_sample": False})
    log(f"wrote {out / 'diffusers'} (LCMScheduler: sample with --sampler lcm --spacing lcm, 1–8 steps)")
    return out

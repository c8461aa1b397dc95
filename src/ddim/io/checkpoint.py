"""Run folders and checkpoints: safetensors + JSON only (nothing is ever unpickled), atomic writes.

A run folder holds `config.json` (the resolved training config) and checkpoint folders
`ckpt-00001000/` with `model.safetensors`, `ema.safetensors`, `optimizer.safetensors` and `state.json`
(step, RNG states, loss history). The file `latest` names the newest complete checkpoint; it is
replaced atomically only after that checkpoint's files are written and fsynced, so a crash or a full
disk mid-write leaves the previous checkpoint in force.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..core.errors import CheckpointError

FORMAT_VERSION = 1
_umask = os.umask(0)
os.umask(_umask)
_FILE_MODE = 0o666 & ~_umask  # what a plain open() would give; mkstemp's 0600 would hide shipped files


# ----------------------------------------------------------------------------------- atomic writes
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def _atomic_path(path: Path) -> Iterator[str]:
    """Yield a temporary path beside `path`; after the caller wrote it: fsync, rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, rename over `path`."""
    with _atomic_path(Path(path)) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_save_npy(path: str | Path, arr: Any) -> None:
    """A .npy file written atomically."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, arr)
    atomic_write_bytes(path, buf.getvalue())


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors file written atomically (tensors made contiguous and moved to the CPU)."""
    with _atomic_path(Path(path)) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)


def safetensors_header(path: Path) -> dict[str, Any]:
    """Parse and validate a safetensors header: 8 bytes little-endian length N, then N bytes of a JSON object
    whose tensors' byte ranges lie inside the file. Detects the format by what the file is, not by one byte."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= n <= min(size - 8, 100 * 2**20):
            raise CheckpointError(_not_safetensors(path, head))
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(_not_safetensors(path, head)) from None
    if not isinstance(header, dict):
        raise CheckpointError(_not_safetensors(path, head))
    data = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offs = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)
                and 0 <= offs[0] <= offs[1] <= data):
            raise CheckpointError(f"{path} is a damaged safetensors file (tensor {name!r} lies outside the file; "
                                  "truncated?)")
    return header


def _not_safetensors(path: Path, head: bytes) -> str:
    if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":
        return (f"{path} looks like a pickle/torch.save file; ddim loads safetensors only and never unpickles "
                "(convert it with safetensors first)")
    return f"{path} is not a safetensors file (bad header; truncated or corrupt?)"


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a pickle, a truncated or a corrupt file is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing weights file {path}")
    safetensors_header(path)
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a valid safetensors file (truncated or corrupt?): {e}") from None


def load_state_into(module: torch.nn.Module, path: str | Path, tied: dict[str, str] | None = None) -> None:
    """Load weights into a module, with a clear error for missing, extra or wrong-shape tensors; `tied` maps
    parameters that share another's storage (saved once, as transformers does) to the one saved."""
    tensors = load_tensors(path)
    own = module.state_dict()
    for alias, source in (tied or {}).items():
        if alias not in tensors and source in tensors:
            tensors[alias] = tensors[source]
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    if missing or extra:
        raise CheckpointError(f"{path} does not fit the model: missing {missing[:3]}{'...' if len(missing) > 3 else ''}"
                              f" unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}")
    for k, v in tensors.items():
        if v.shape != own[k].shape:
            raise CheckpointError(f"{path}: tensor {k} has shape {tuple(v.shape)}, the model expects "
                                  f"{tuple(own[k].shape)}")
        if not torch.isfinite(v).all() and v.is_floating_point():
            raise CheckpointError(f"{path}: tensor {k} contains NaN or inf")
    module.load_state_dict(tensors)


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from a file; missing, malformed or non-object content is a CheckpointError (exit 2)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"missing {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return obj


# ------------------------------------------------------------------------------- optimizer state
def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Flatten an optimizer state dict into tensors + JSON metadata (no pickling)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, st in sd["state"].items():
        for name, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = val
            else:
                scalars[f"{idx}.{name}"] = val
    return tensors, {"param_groups": json.dumps(sd["param_groups"]), "scalars": json.dumps(scalars)}


def restore_optimizer(opt: torch.optim.Optimizer, path: str | Path) -> None:
    from safetensors import safe_open

    tensors = load_tensors(path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    try:
        groups = json.loads(meta["param_groups"])
        scalars = json.loads(meta.get("scalars", "{}"))
    except (KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: optimizer metadata missing or corrupt ({e})") from None
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = val
    for key, val in scalars.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = val
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: optimizer state does not fit ({e})") from None


# ----------------------------------------------------------------------------------- run folders
def latest_checkpoint(run: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    run = Path(run)
    pointer = run / "latest"
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    ck = run / name
    if not name.startswith("ckpt-") or not (ck / "state.json").is_file():
        raise CheckpointError(f"{pointer} names {name!r}, which is not a complete checkpoint")
    return ck


def write_checkpoint(run: str | Path, step: int, files: dict[str, dict[str, torch.Tensor]],
                     metas: dict[str, dict[str, str]], state: dict[str, Any], keep: int = 2) -> Path:
    """Write ckpt-<step>/ completely, then point `latest` at it, then prune older checkpoints."""
    run = Path(run)
    name = f"ckpt-{step:08d}"
    final = run / name
    tmp = run / f".{name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        for fname, tensors in files.items():
            save_tensors(tmp / fname, tensors, metas.get(fname))
        atomic_write_json(tmp / "state.json", {**state, "format_version": FORMAT_VERSION, "step": step})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(run)
        atomic_write_bytes(run / "latest", (name + "\n").encode())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    ckpts = sorted(p for p in run.glob("ckpt-*") if p.is_dir())
    for old in ckpts[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def export_diffusers(unet: torch.nn.Module, schedule_config: dict[str, Any], out: str | Path,
                     extra_scheduler: dict[str, Any] | None = None, conditioning: dict[str, Any] | None = None
                     ) -> Path:
    """A diffusers pipeline folder (model_index.json, unet/, scheduler/) that DDPMPipeline can load; a
    class-conditional model also gets conditioning.json (its classes and null label)."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "unet").mkdir(parents=True)
    unet.save_pretrained(tmp / "unet", safe_serialization=True)
    sched_cfg = {"_class_name": "DDPMScheduler", "_diffusers_version": "0.42.1", **schedule_config,
                 **(extra_scheduler or {})}
    atomic_write_json(tmp / "scheduler" / "scheduler_config.json", sched_cfg)
    atomic_write_json(tmp / "model_index.json", {"_class_name": "DDPMPipeline", "_diffusers_version": "0.42.1",
                                                 "unet": ["diffusers", "UNet2DModel"],
                                                 "scheduler": ["diffusers", sched_cfg["_class_name"]]})
    if conditioning is not None:
        atomic_write_json(tmp / "conditioning.json", conditioning)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out

"""On-disk model formats, one module each (`detect` + `load`), and the loader that dispatches over them.

A format's `detect(spec, path)` says whether it reads a model spec (a name or a folder); its
`load(spec, path, device, dtype)` returns an immutable `ddim.models.contract.Model`. The first format in
`FORMATS` that detects a spec loads it (`ddim.io.loader.load_model`); adding a format is one new module and
one entry here.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

#: the formats, most specific first
FORMATS = ("mixture", "run_folder", "sdxl", "sd3", "flux", "sd", "distilled", "meanflow", "dit_folder", "unet_folder")


def format_module(name: str) -> ModuleType:
    return import_module(f"{__name__}.{name}")

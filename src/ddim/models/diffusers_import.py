"""Import one diffusers network class without running diffusers' eager sub-package `__init__`s.

`diffusers.models.unets` and `diffusers.models.transformers` import every UNet and transformer diffusers has
(about 60 modules, ~1.5 s on 2 cores) as soon as one of them is asked for. Here each of the two packages is
registered first as a module with its real `__path__` whose full `__init__` runs on the first attribute it
lacks, so `from diffusers.models.unets.unet_2d import UNet2DModel` loads only what UNet2DModel needs, and
`diffusers.models.unets.UNet1DModel` (or anything else a user asks for) still works: the whole package is
then loaded as usual. The classes are diffusers' own; only the order of loading changes.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from types import ModuleType

EAGER_PACKAGES = ("diffusers.models.unets", "diffusers.models.transformers")
_lock = threading.Lock()


def _deferred_package(name: str) -> None:
    """Register `name` with its real path; its __init__ runs on the first attribute it does not have."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)

    def __getattr__(attr: str) -> object:
        if attr.startswith("__"):
            raise AttributeError(attr)
        with _lock:
            if "__getattr__" in module.__dict__:
                del module.__dict__["__getattr__"]
                spec.loader.exec_module(module)  # the package's real __init__, in the same module object
        return getattr(module, attr)

    module.__getattr__ = __getattr__  # type: ignore[attr-defined]
    sys.modules[name] = module


def import_class(module: str, name: str) -> type:
    """diffusers' class `name` from its own module (e.g. diffusers.models.unets.unet_2d)."""
    importlib.import_module("diffusers.models")
    for pkg in EAGER_PACKAGES:
        _deferred_package(pkg)
    mod: ModuleType = importlib.import_module(module)
    return getattr(mod, name)

"""The samplers: pure functions of (model, x, levels) registered by name with the options they declare."""

from __future__ import annotations

from . import consistency as _consistency  # noqa: F401  (registers)
from . import ddim as _ddim  # noqa: F401
from . import ddpm as _ddpm  # noqa: F401
from . import dpmpp as _dpmpp  # noqa: F401
from . import heun as _heun  # noqa: F401
from . import pndm as _pndm  # noqa: F401
from . import rk4 as _rk4  # noqa: F401
from . import unipc as _unipc  # noqa: F401
from .base import SAMPLERS, Sampler, check_eta, get_sampler, register
from .ddim import sample_ddim
from .ddpm import sample_ddpm

__all__ = ["SAMPLERS", "Sampler", "check_eta", "get_sampler", "register", "sample_ddim", "sample_ddpm"]

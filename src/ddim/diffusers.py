"""Drop-in diffusers schedulers on ddim's core (`pipe.scheduler = ddim.diffusers.DPMSolverMultistepScheduler(...)`)."""

from .io.schedulers import *  # noqa: F403
from .io.schedulers import __all__  # noqa: F401

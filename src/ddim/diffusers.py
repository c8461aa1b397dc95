"""Drop-in diffusers schedulers on ddim's core (`pipe.scheduler = ddim.diffusers.DDIMScheduler(...)`)."""

from .io.schedulers import DDIMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

__all__ = ["DDIMScheduler", "DPMSolverMultistepScheduler", "FlowMatchEulerDiscreteScheduler"]

"""diffusers-compatible schedulers on ddim's core (drop-in: `pipe.scheduler = DPMSolverMultistepScheduler(...)`)."""

from .dpm import DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler, UniPCMultistepScheduler
from .flow import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from .grid import DDIMScheduler, DDPMScheduler, LCMScheduler, PNDMScheduler, TCDScheduler
from .karras import (
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
)

__all__ = ["DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "DPMSolverSDEScheduler",
           "DPMSolverSinglestepScheduler", "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler",
           "FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler", "HeunDiscreteScheduler",
           "LCMScheduler", "PNDMScheduler", "TCDScheduler", "UniPCMultistepScheduler"]

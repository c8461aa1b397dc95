"""diffusers-compatible schedulers on ddim's core (drop-in: `pipe.scheduler = DPMSolverMultistepScheduler(...)`)."""

from .dpm import DPMSolverMultistepScheduler, UniPCMultistepScheduler
from .flow import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from .grid import DDIMScheduler, DDPMScheduler, LCMScheduler, TCDScheduler
from .karras import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler

__all__ = ["DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "EulerAncestralDiscreteScheduler",
           "EulerDiscreteScheduler", "FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler",
           "HeunDiscreteScheduler", "LCMScheduler",
           "TCDScheduler", "UniPCMultistepScheduler"]

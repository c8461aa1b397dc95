"""Report headers: the exact command, versions and machine at the top of every bench report."""

from __future__ import annotations

import datetime
import os
import platform

import torch


def header(title: str, command: str) -> str:
    import numpy as np

    try:
        import diffusers

        dv = diffusers.__version__
    except ImportError:  # pragma: no cover
        dv = "not installed"
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"# {title}\n\nCommand: `{command}`  \n"
            f"Versions: ddim 0.1.0, torch {torch.__version__}, numpy {np.__version__}, diffusers {dv}, "
            f"Python {platform.python_version()}  \n"
            f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
            f"{'CUDA ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}; {when}\n")

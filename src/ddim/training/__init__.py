"""Training: the config, and the L_simple loop with EMA, atomic checkpoints, exact resume and DDP."""

"""Loading and saving: checkpoints, configs, run folders, diffusers folders and schedulers, data, shards, figures."""

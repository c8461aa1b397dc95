"""What is built from the core: inversion, latent edits, likelihood, schedule search, reference solutions, metrics."""

"""Networks and exact models: the MLP for 2-D data, diffusers' UNet2DModel for images, exact mixtures."""

from .mixture import GaussianMixture, MixtureEpsilon, mog3
from .mlp import MLP

__all__ = ["MLP", "GaussianMixture", "MixtureEpsilon", "mog3"]

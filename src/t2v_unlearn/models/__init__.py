"""Video diffusion models implemented in this repository (diffusers `ModelMixin` components)."""

"""Pieces shared by the diffusion engines (SUPIR, CCSR): colour correction, the tiled VAE and
the latent tiling with Gaussian weights."""

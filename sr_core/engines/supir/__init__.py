"""SUPIR (Yu et al. 2024): SDXL-based restoration upscaling, the official checkpoints loaded onto
diffusers components."""

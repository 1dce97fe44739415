"""Diffusion features (Mukhopadhyay et al.): U-Net activations at (block, timestep), pooled, cached, probed."""

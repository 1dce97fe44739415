"""Diffusion features (Mukhopadhyay et al.): U-Net activations at (block, timestep), pooled, cached, probed."""

# The files of a `features sweep` run: `results.sweep` writes them, `features.shortlist` reads its head back.
SWEEP_JSON = "features_sweep.json"
SWEEP_DETAILS = "features_sweep_details.json"

"""Training the embedded world's models: configs and JSON recipes, one loop, one objective per model kind.

Kept import-free so `diffdisc --help` can list the recipes without loading torch.
"""

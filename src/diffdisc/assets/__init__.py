"""Where the files shipped in the package live: Fashion-MNIST subsets, the trained models, their README."""

from importlib import resources
from pathlib import Path

ASSETS_DIR = Path(str(resources.files(__name__)))
MODELS_DIR = ASSETS_DIR / "models"  # one folder per shipped model, named as `create_backbone` takes it

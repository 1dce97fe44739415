"""diffdisc: diffusion models as discriminators.

Python API mirrors the CLI::

    from diffdisc import ClassifyConfig, create_backbone, classify
    bb = create_backbone("path/to/model")
    result = classify(bb, "images/", ClassifyConfig(classes=("cat", "dog")), out="runs/x")
"""

__version__ = "0.1.0"

from .errors import DiffdiscError  # noqa: E402


def __getattr__(name):  # lazy: importing diffdisc must not import torch/diffusers
    if name in {"create_backbone", "list_backbones"}:
        from .backbones import registry

        return getattr(registry, name)
    if name in {"ScoreConfig", "AdaptiveConfig"}:
        from .scoring import config

        return getattr(config, name)
    if name in {"classify", "ClassifyConfig"}:
        from .tasks import classify

        return getattr(classify, name)
    if name in {"run_claims", "ClaimsConfig"}:
        from .tasks import claims

        return getattr(claims, name)
    if name == "write_report":
        from .report.html import write_report

        return write_report
    raise AttributeError(name)


__all__ = ["DiffdiscError", "create_backbone", "list_backbones", "ScoreConfig", "AdaptiveConfig", "ClassifyConfig", "classify", "run_claims", "ClaimsConfig",
           "write_report"]

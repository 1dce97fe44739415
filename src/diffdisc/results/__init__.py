"""Every task's output read back from disk: one Result class per kind of run, each the only reader of its files.

Above scoring, below tasks: tasks return and write them, `diffdisc report` loads them (`RESULTS` says which kinds
exist, each `claims(dir)` whether a directory is one of its kind). Each has `load(dir)` and `metrics()`.
"""

from .base import Result, model_label
from .baseline import BaselineEval, BaselineResult
from .claims import ClaimsResult
from .classification import ClassificationResult
from .feature_probe import FeatureProbeResult
from .match import MatchResult
from .sweep import SweepResult, plot_sweep
from .synth import SynthResult, SynthSample
from .training import TrainResult

# The kinds a report shows. TrainResult (a `diffdisc train` directory) is not one: a report never showed training
# runs, it shows what their model/ scored.
RESULTS: tuple[type[Result], ...] = (ClassificationResult, MatchResult, SweepResult, FeatureProbeResult, SynthResult,
                                     BaselineResult, ClaimsResult)

__all__ = [
    "RESULTS", "BaselineEval", "BaselineResult", "ClaimsResult", "ClassificationResult", "FeatureProbeResult", "MatchResult", "Result", "SweepResult",
    "SynthResult", "SynthSample", "TrainResult", "model_label", "plot_sweep",
]  # fmt: skip

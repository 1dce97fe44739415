"""Every task's output read back from disk: one Result class per kind of run, each the only reader of its files.

Above scoring, below tasks: tasks return and write them, `diffdisc report` loads them (`RESULTS` says which kinds
exist, each `claims(dir)` whether a directory is one of its kind). Each has `metrics()`, and those of a kind of
directory `load(dir)`; what a task returned before results were objects (a list of records or rows, a dict, a
path) its Result still reads as (`MatchResult`, `ProbeResult`, the `DictResult`s, `SynthResult`).
"""

from .adapter import AdapterResult
from .base import DictResult, PathResult, Result, model_label
from .baseline import BaselineEval, BaselineResult
from .claims import ClaimsResult
from .classification import CalibrationResult, ClassificationResult
from .colour_prior import ColourPriorResult
from .feature_probe import FeatureProbeResult
from .match import MatchResult, ProbeResult
from .suite import SuiteResult
from .sweep import SweepResult, plot_sweep
from .synth import SynthResult, SynthSample
from .training import TrainResult

# The kinds a report shows. TrainResult (a `diffdisc train` directory) is not one: a report never showed training
# runs, it shows what their model/ scored.
RESULTS: tuple[type[Result], ...] = (ClassificationResult, MatchResult, SweepResult, FeatureProbeResult, SynthResult,
                                     BaselineResult, ClaimsResult, SuiteResult)

__all__ = [
    "RESULTS", "AdapterResult", "BaselineEval", "BaselineResult", "CalibrationResult", "ClaimsResult", "ClassificationResult",
    "ColourPriorResult", "DictResult", "FeatureProbeResult", "MatchResult", "PathResult", "ProbeResult", "Result", "SweepResult",
    "SuiteResult", "SynthResult", "SynthSample", "TrainResult", "model_label", "plot_sweep",
]  # fmt: skip

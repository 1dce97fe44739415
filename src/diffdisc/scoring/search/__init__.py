"""Search strategies over one engine (`base`): every kind registered on import, so `SearchConfig.from_dict`
reads any of them."""

from ..config import AdaptiveConfig
from .base import SEARCHES, Bound, Inputs, Search, SearchConfig, SearchContext, register
from .cascade import Cascade, CascadeConfig
from .exhaustive import Exhaustive, ExhaustiveConfig
from .halving import Halving, HalvingConfig
from .learned import LearnedOrder, LearnedOrderConfig
from .tree import Tree, TreeConfig, TreeScores
from .ttest import TTest, TTestConfig


def from_adaptive(a: AdaptiveConfig, weights: bool = True) -> SearchConfig:
    """The search the flat `AdaptiveConfig` (the command line's options, run.json's `adaptive`) stands for;
    its learned weights wrap it (`weights=False`: left to the caller, who wraps a composed search)."""
    flat = {
        "exhaustive": lambda: ExhaustiveConfig(n_timesteps=a.n_timesteps, timesteps=a.timesteps, sigmas=a.sigmas),
        "halving": lambda: HalvingConfig(stages=a.stages, exit_z=a.exit_z, timesteps=a.timesteps, sigmas=a.sigmas),
        "ttest": lambda: TTestConfig(min_scores=a.min_scores, max_scores=a.max_scores, p_value=a.p_value, sigmas=a.sigmas),
    }[a.strategy]()
    return LearnedOrderConfig(a.timestep_weights, flat) if weights and a.timestep_weights else flat


__all__ = ["SEARCHES", "Bound", "Cascade", "CascadeConfig", "Exhaustive", "ExhaustiveConfig",
           "Halving", "HalvingConfig", "Inputs", "LearnedOrder", "LearnedOrderConfig", "Search", "SearchConfig",
           "SearchContext", "TTest", "TTestConfig", "Tree", "TreeConfig", "TreeScores", "from_adaptive", "register"]

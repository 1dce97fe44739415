"""The label-tree world several test files search: six candidates in three clusters of two (NAMES, SHORT), whose
conditions are their templates, and four images of known labels."""

import torch

from test_scoring import TemplateBackbone

NAMES = ["a0", "a1", "b0", "b1", "c0", "c1"]  # three clusters of two
SHORT = {"a": ["a0", "a1"], "b": ["b0", "b1"], "c": ["c0", "c1"]}


class VecBackbone(TemplateBackbone):
    """Conditions are the templates themselves, so a coarse node's mean condition is the mean of its templates."""

    def _condition_batch(self, candidates):
        return self.templates[torch.as_tensor(candidates)].flatten(1)

    def model_output(self, x_t, t, cond):
        sa, sb = self.process.coef(t, x_t)
        return (x_t - sa * cond.view_as(x_t)) / sb


def make_tree_world():
    """(backbone, images x0, keys, conditions of the six candidates, labels)."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 1, 8, 8, generator=g)
    templates = centres.repeat_interleave(2, 0) + 0.3 * torch.randn(6, 1, 8, 8, generator=g)
    labels = [0, 3, 5, 2]
    x0 = templates[labels] + 0.05 * torch.randn(4, 1, 8, 8, generator=g)
    bb = VecBackbone(templates)
    return bb, x0, [f"i{i}" for i in range(4)], bb.conditions(list(range(6))), labels

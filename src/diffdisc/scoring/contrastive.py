"""The contrastive scorer: an open_clip model's negated scaled cosine, so that lower is better as for errors.

As open_clip's zero-shot classifier, a candidate with several prompt templates is the L2-normalised mean of
their text embeddings, and an image's score against it is -logit_scale × cosine. No noise, no timesteps, no
U-Net calls: the engine scores a whole chunk as one table, recorded at the one 'timestep' 0.
"""

from __future__ import annotations

import torch

from .scorers import Scorer


class ContrastiveScorer(Scorer):
    name = kind = "contrastive"
    calls_per_item = 0
    needs_noise = False

    def candidates(self, conds, groups):
        """One condition per candidate: the normalised mean of its prompts' (normalised) text embeddings."""
        cls = torch.stack([conds[g].mean(0) for g in groups])
        return cls / cls.norm(dim=-1, keepdim=True), [[c] for c in range(len(groups))]

    def table(self, x0, conds):
        """[images, candidates]: -logit_scale × cosine of the (normalised) image embeddings `x0` with `conds`."""
        model = self.backbone.model
        scale = model.logit_scale.exp().float() if hasattr(model, "logit_scale") else 100.0
        return -(scale * x0.to(conds.device) @ conds.T)

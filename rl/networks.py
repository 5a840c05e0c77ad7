"""Q-networks served by the learned agents.

Each network declares `INPUT_SCHEMA`, the description of the inputs it was built for.
The weight store keeps it beside the tensors, and a worker refuses weights whose schema
differs from the network it serves, so a model never silently reads the wrong columns.
"""

from __future__ import annotations

import torch
from torch import nn

from ad_orchestrator.features import AD_DIM, CONTEXT_DIM

CONTENT_HIDDEN = 64


class ContentQNet(nn.Module):
    """Q(context, ad): the expected reward (click) of showing `ad` in `context`.

    The context and each ad are embedded separately and combined, so one forward
    pass scores every candidate of a request.
    """

    INPUT_SCHEMA = f"content-q/v1 context={CONTEXT_DIM} ad={AD_DIM}"

    def __init__(self, hidden: int = CONTENT_HIDDEN) -> None:
        super().__init__()
        self.context = nn.Sequential(nn.Linear(CONTEXT_DIM, hidden), nn.ReLU())
        self.ad = nn.Sequential(nn.Linear(AD_DIM, hidden), nn.ReLU())
        self.head = nn.Sequential(
            nn.Linear(3 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, context: torch.Tensor, ads: torch.Tensor) -> torch.Tensor:
        """Score ads.

        Args:
            context: `(batch, CONTEXT_DIM)` request encodings.
            ads: `(batch, n_ads, AD_DIM)` candidate encodings.

        Returns:
            `(batch, n_ads)` Q-values.
        """
        c = self.context(context).unsqueeze(1).expand(-1, ads.shape[1], -1)
        a = self.ad(ads)
        return self.head(torch.cat([c, a, c * a], dim=-1)).squeeze(-1)

"""Domain generalization as plain functions: MixStyle on ViT tokens and the IRMv1 penalty.

The callbacks :class:`~mammopath.callbacks.mixstyle.MixStyle` and :class:`~mammopath.callbacks.irm.IRM`
wrap them.
"""

from mammopath.dg.irm import irm_penalty
from mammopath.dg.mixstyle import crossdomain_partners, mixstyle, random_partners, restyle, token_statistics

__all__ = ["crossdomain_partners", "irm_penalty", "mixstyle", "random_partners", "restyle", "token_statistics"]

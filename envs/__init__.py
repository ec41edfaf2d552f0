"""Gymnasium environments for the reinforcement-learning agents.

Registered by string entry point (importing this package does not import torch)::

    gymnasium.make("autotune/ConfigSearch-v0", space=..., directions=..., evaluate=...,
                   reference=..., ideal=...)
    gymnasium.make("autotune/LayerWise-v0", model=..., evaluate=...)
"""

from __future__ import annotations

import gymnasium

CONFIG_SEARCH_ID = "autotune/ConfigSearch-v0"
LAYER_WISE_ID = "autotune/LayerWise-v0"

# (this folder ships as ``autotune.envs``: the entry points name the package it is imported as)
for _id, _entry in ((CONFIG_SEARCH_ID, f"{__name__}.config_search:ConfigSearchEnv"),
                    (LAYER_WISE_ID, f"{__name__}.layer_wise:LayerWiseEnv")):
    if _id not in gymnasium.registry:
        gymnasium.register(id=_id, entry_point=_entry, disable_env_checker=True)

__all__ = ["CONFIG_SEARCH_ID", "LAYER_WISE_ID"]

"""Search agents behind one interface (:class:`~autotune.agents.base.Agent`).

The registry maps the names jobs use (``agent: {name: tpe}``) to their classes, imported lazily
so that validating a job does not import optuna, scikit-optimize or stable-baselines3.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from autotune.errors import DependencyError, SpecError
from autotune.measure.runtimes import entry_points

if TYPE_CHECKING:
    from autotune.agents.base import Agent

#: name -> "module:Class"; options are passed to the class as keyword arguments
AGENTS: dict[str, str] = {
    "auto": "autotune.agents.auto:AutoAgent",
    "tpe": "autotune.agents.optuna:OptunaAgent",
    "gp": "autotune.agents.optuna:OptunaAgent",
    "nsga2": "autotune.agents.optuna:OptunaAgent",
    "nsga3": "autotune.agents.optuna:OptunaAgent",
    "qmc": "autotune.agents.optuna:OptunaAgent",
    "random": "autotune.agents.optuna:OptunaAgent",
    "grid": "autotune.agents.optuna:GridAgent",
    "skopt-gp": "autotune.agents.skopt:SkoptGPAgent",
    "skopt-rf": "autotune.agents.skopt:SkoptRFAgent",
    "skopt-et": "autotune.agents.skopt:SkoptETAgent",
    "skopt-gbrt": "autotune.agents.skopt:SkoptGBRTAgent",
    "rl-ppo": "autotune.agents.rl:PPOAgent",
    "rl-a2c": "autotune.agents.rl:A2CAgent",
    "rl-dqn": "autotune.agents.rl:DQNAgent",
}

#: chosen from experiments/bench_agents.py (README, "Choosing an agent"): Optuna's GP sampler has
#: the highest mean hypervolume ratio at 50 and 100 trials by far (0.816 and 0.884; next best 0.499
#: and 0.833), at ~0.25 s per suggestion, small next to measuring a model configuration
DEFAULT_AGENT = "auto"


def create_agent(name: str, *args: Any, **kwargs: Any) -> Agent:
    """Instantiate the agent registered as ``name``."""
    plugins = entry_points("autotune.agents")  # third-party agents: name = "module:Class"
    if name not in AGENTS and name in plugins:
        return plugins[name].load()(*args, **kwargs)
    try:
        target = AGENTS[name]
    except KeyError:
        raise SpecError(
            f"unknown agent '{name}'.", path="agent.name",
            hint=f"Available agents: {', '.join(sorted([*AGENTS, *plugins]))}.",
        ) from None
    module, cls = target.split(":")
    try:
        klass = getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise DependencyError(
            f"the agent '{name}' needs a package that is not installed ({exc}); install it, or pick "
            "another agent."
        ) from exc
    return klass(*args, sampler=name, **kwargs) if cls == "OptunaAgent" else klass(*args, **kwargs)


__all__ = ["AGENTS", "DEFAULT_AGENT", "create_agent"]

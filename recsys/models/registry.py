"""Model registry: config name -> (config class, model class), imported lazily.

Every model module defines a pydantic config (with `name: Literal[...]`) and a model class with
`from_config(cfg, num_items: int, num_categories: int) -> nn.Module`.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

import torch

# name -> (module, config class, model class, task)
MODELS: dict[str, tuple[str, str, str, str]] = {
    "sasrec": ("recsys.models.sasrec", "SASRecConfig", "SASRec", "next_item"),
    "mqsa_ted": ("recsys.models.mqsa_ted", "MQSATEDConfig", "MQSATED", "next_item"),
    "din": ("recsys.models.din", "DINConfig", "DIN", "ctr"),
    "twin": ("recsys.models.twin", "TWINConfig", "TWIN", "ctr"),
    "dare": ("recsys.models.dare", "DAREConfig", "DARE", "ctr"),
    "sdim": ("recsys.models.sdim", "SDIMConfig", "SDIM", "ctr"),
}


def _entry(name: str) -> tuple[type, type, str]:
    if name not in MODELS:
        raise ValueError(f"model.name: unknown model {name!r}; known: {sorted(MODELS)}")
    module, cfg_cls, model_cls, task = MODELS[name]
    mod = import_module(module)
    return getattr(mod, cfg_cls), getattr(mod, model_cls), task


def model_task(name: str) -> str:
    return _entry(name)[2]


def parse_model_config(data: dict[str, Any]) -> Any:
    """Validate a `model:` mapping into its model's config class (error names the field)."""
    from recsys.config import parse_config

    if "name" not in data:
        raise ValueError("model.name is required")
    cfg_cls, _, _ = _entry(str(data["name"]))
    return parse_config(data, cfg_cls, source="model")


def build_model(cfg: Any, num_items: int, num_categories: int = 0) -> torch.nn.Module:
    _, model_cls, _ = _entry(cfg.name)
    return model_cls.from_config(cfg, num_items=num_items, num_categories=num_categories)

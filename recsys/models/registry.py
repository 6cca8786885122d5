"""Model registry: the typed model config (a pydantic union discriminated on `name`) and the
model class and task of each name.

Every model module defines a pydantic config (with `name: Literal[...]`) and a model class with
`from_config(cfg, num_items: int, num_categories: int) -> nn.Module`. `ModelConfig` is the union
of those configs: `ExperimentConfig.model` is one, validated once when the experiment is read.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

import torch
from pydantic import Field, TypeAdapter, ValidationError

from recsys.models.dare import DARE, DAREConfig
from recsys.models.din import DIN, DINConfig
from recsys.models.mqsa_ted import MQSATED, MQSATEDConfig
from recsys.models.sasrec import SASRec, SASRecConfig
from recsys.models.sdim import SDIM, SDIMConfig
from recsys.models.twin import TWIN, TWINConfig

#: the config of any model, chosen by its `name`
ModelConfig = Annotated[
    Union[SASRecConfig, MQSATEDConfig, DINConfig, TWINConfig, DAREConfig, SDIMConfig],
    Field(discriminator="name"),
]

# name -> (model class, task)
MODELS: dict[str, tuple[type[torch.nn.Module], str]] = {
    "sasrec": (SASRec, "next_item"),
    "mqsa_ted": (MQSATED, "next_item"),
    "din": (DIN, "ctr"),
    "twin": (TWIN, "ctr"),
    "dare": (DARE, "ctr"),
    "sdim": (SDIM, "ctr"),
}

_ADAPTER: TypeAdapter[Any] = TypeAdapter(ModelConfig)


def _entry(name: str) -> tuple[type[torch.nn.Module], str]:
    if name not in MODELS:
        raise ValueError(f"model.name: unknown model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name]


def model_task(name: str) -> str:
    """"next_item" or "ctr": the task a model name trains on."""
    return _entry(name)[1]


def parse_model_config(data: dict[str, Any]) -> ModelConfig:
    """Validate a `model:` mapping into its model's config class (the error names the field)."""
    from recsys.config import ConfigError

    if "name" not in data:
        raise ConfigError("model.name is required")
    _entry(str(data["name"]))  # a clear message for an unknown name
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        lines = ["model: invalid config"]
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"][1:]) or "<root>"
            lines.append(f"  model.{loc}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None


def build_model(cfg: ModelConfig, num_items: int, num_categories: int = 0) -> torch.nn.Module:
    model_cls, _ = _entry(cfg.name)
    return model_cls.from_config(cfg, num_items=num_items, num_categories=num_categories)

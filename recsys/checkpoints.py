"""Exact-resume checkpoints of the training loop (recsys/train.py).

One safetensors file holds every tensor (model, optimizer state, weight average, and the RNG
states of every rank, `rng.{rank}.{generator,torch,cuda}`, so a resumed worker draws what an
uninterrupted one would; no pickle); its metadata carries the JSON-serialisable rest (the loop
state and the optimizer's scalars). It is written to a temp file and moved in place with
`os.replace` (atomic); `checkpoint.json` next to it is the same JSON for humans.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FILE = "checkpoint.safetensors"
CHECKPOINT_JSON = "checkpoint.json"
BEST_FILE = "best.safetensors"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP / DistributedModelParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


def atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return {"__tuple__": [_jsonable(v) for v in value]}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _from_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_from_jsonable(v) for v in value["__tuple__"])
        return {k: _from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_jsonable(v) for v in value]
    return value


def _optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (safetensors) and the JSON rest."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = val
            else:
                scalars.setdefault(str(idx), {})[name] = val
    return tensors, {"param_groups": _jsonable(sd["param_groups"]), "scalars": scalars}


def _optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = val
    for idx, vals in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(vals)
    return {"state": state, "param_groups": _from_jsonable(meta["param_groups"])}


def rng_states(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """This process's random states: the task's generator, torch's default (dropout) and CUDA's."""
    states = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def gather_rng_states(generator: torch.Generator, world_size: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Every rank's `rng_states`, by rank, on every rank (a collective when world_size > 1: every
    rank calls it; one all-gather per state, on `device`, the process group's)."""
    local = rng_states(generator)
    if world_size <= 1:
        return [local]
    ranks: list[dict[str, torch.Tensor]] = [{} for _ in range(world_size)]
    for name, value in local.items():  # fixed-size byte tensors: the same shape on every rank
        out = [torch.empty_like(value, device=device) for _ in range(world_size)]
        torch.distributed.all_gather(out, value.to(device))
        for r, t in enumerate(out):
            ranks[r][name] = t.cpu()
    return ranks


def save_checkpoint(
    path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, rng: list[dict[str, torch.Tensor]],
    state: dict[str, Any], ema: torch.nn.Module | None = None,
) -> None:
    """Everything needed to continue training exactly, in one atomically written file; `rng` holds
    `rng_states` of every rank, by rank."""
    tensors = {f"model.{k}": v for k, v in unwrap(model).state_dict().items()}
    opt_tensors, opt_meta = _optimizer_to_flat(opt)
    tensors.update(opt_tensors)
    if ema is not None:  # the averaged copy and its step count
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    for rank, states in enumerate(rng):
        tensors.update({f"rng.{rank}.{name}": v for name, v in states.items()})
    meta = {"loop": state, "optimizer": opt_meta}
    atomic_save(tensors, path, metadata={"json": json.dumps(meta)})
    atomic_write_text(path.with_name(CHECKPOINT_JSON), json.dumps(meta, indent=1, sort_keys=True))


def _restore_rng(path: Path, tensors: dict[str, torch.Tensor], generator: torch.Generator, rank: int) -> None:
    """Set this rank's generator, torch and CUDA random states from the checkpoint's."""
    prefix = f"rng.{rank}."
    if prefix + "generator" not in tensors and rank == 0 and "rng.generator" in tensors:
        prefix = "rng."  # written before per-rank states: its one state is rank 0's
    if prefix + "generator" not in tensors:
        saved = sorted({k.split(".")[1] for k in tensors if k.startswith("rng.")})
        raise ValueError(f"{path}: checkpoint has no random state for rank {rank} (it has ranks {saved}); "
                         "resume with the number of workers that wrote it, or start over (resume=False)")
    generator.set_state(tensors[prefix + "generator"])
    torch.set_rng_state(tensors[prefix + "torch"])
    if prefix + "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors[prefix + "cuda"])


def load_checkpoint(
    path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, generator: torch.Generator,
    ema: torch.nn.Module | None = None, rank: int = 0,
) -> dict[str, Any]:
    """Restore model/optimizer state and rank `rank`'s RNG states from `save_checkpoint`; returns
    the loop state."""
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["json"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    device = next(unwrap(model).parameters()).device
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    unwrap(model).load_state_dict(model_sd, strict=True)
    opt_sd = _optimizer_from_flat(
        {k: v.to(device) if v.dim() > 0 else v for k, v in tensors.items() if k.startswith("optim.")}, meta["optimizer"]
    )
    opt.load_state_dict(opt_sd)
    if ema is not None:
        ema_sd = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
        if not ema_sd:
            raise ValueError(f"{path}: checkpoint has no weight average, but train.ema_decay is set "
                             "(it was written by a run without it)")
        ema.load_state_dict(ema_sd, strict=True)
    _restore_rng(path, tensors, generator, rank)
    return meta["loop"]

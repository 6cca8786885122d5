"""Shared pieces of the long-sequence CTR models (DIN, TWIN, DARE, SDIM).

- `_ops()`: the retrieval-stage op namespace (`kernels.ops`).
- `BehaviourEmbedding`: item / category / target-relative-position fields, each optional.
- `CTRHead`: BatchNorm -> [Linear -> PReLU]* -> Linear(1) (DARE's head; SDIM uses it too).
- `check_ctr_batch`, `bce_loss`, `append_history`: batch validation and the serving helpers.

Target-relative position of history slot j is `len - j` (most recent = 1), clamped to
`max_position`; the target itself gets position 0 (as in DARE's code); padding gets 0 too but
is always masked out downstream.
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn as nn
import torch.nn.functional as F


def _ops() -> ModuleType:
    """The op namespace the models call (names as in docs/INTERFACES.md "Kernel ops"), imported on
    first use so that building a model config does not load the kernels."""
    from kernels import ops

    return ops


CTR_BATCH_KEYS = ("target_items", "target_cats", "hist_items", "hist_cats", "hist_lengths", "labels")


def check_ctr_batch(batch: dict[str, torch.Tensor], need_labels: bool = False) -> None:
    """Validate a CTR batch (docs/INTERFACES.md); errors name the offending field."""
    keys = CTR_BATCH_KEYS if need_labels else CTR_BATCH_KEYS[:-1]
    for key in keys:
        if key not in batch:
            raise KeyError(f"CTR batch is missing field {key!r}")
    b = batch["target_items"].shape[0]
    hist = batch["hist_items"]
    if hist.dim() != 2 or hist.shape[0] != b:
        raise ValueError(f"hist_items must be [B={b}, L], got {tuple(hist.shape)}")
    if batch["hist_cats"].shape != hist.shape:
        raise ValueError(f"hist_cats {tuple(batch['hist_cats'].shape)} must match hist_items {tuple(hist.shape)}")
    if batch["target_cats"].shape != (b,):
        raise ValueError(f"target_cats must be [B={b}], got {tuple(batch['target_cats'].shape)}")
    lengths = batch["hist_lengths"]
    if lengths.shape != (b,):
        raise ValueError(f"hist_lengths must be [B={b}], got {tuple(lengths.shape)}")
    if b and (int(lengths.min()) < 0 or int(lengths.max()) > hist.shape[1]):
        raise ValueError(f"hist_lengths must lie in [0, {hist.shape[1]}]")
    if need_labels and batch["labels"].shape != (b,):
        raise ValueError(f"labels must be [B={b}], got {tuple(batch['labels'].shape)}")


def valid_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B] -> [B, L] bool, True at valid (right-padded) positions j < length."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def relative_positions(lengths: torch.Tensor, max_len: int, max_position: int) -> torch.Tensor:
    """Target-relative position ids [B, L]: len - j (most recent = 1), clamped, 0 on padding."""
    j = torch.arange(max_len, device=lengths.device)[None, :]
    pos = (lengths[:, None] - j).clamp(min=0, max=max_position)
    return pos


def recent_window(
    items: torch.Tensor, cats: torch.Tensor, lengths: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The most recent `n` behaviours of right-padded histories, still right-padded.

    items/cats [B, L], lengths [B] -> items/cats [B, n], lengths [B] (= min(len, n)).
    """
    b, l = items.shape
    new_len = lengths.clamp(max=n)
    start = lengths - new_len  # [B]
    j = torch.arange(n, device=items.device)[None, :]
    src = (start[:, None] + j).clamp(max=max(l - 1, 0))  # [B, n]
    ok = j < new_len[:, None]
    if l == 0:
        z = items.new_zeros(b, n)
        return z, z.clone(), new_len
    out_i = torch.where(ok, items.gather(1, src), torch.zeros_like(src))
    out_c = torch.where(ok, cats.gather(1, src), torch.zeros_like(src))
    return out_i, out_c, new_len


class BehaviourEmbedding(nn.Module):
    """[item ‖ category ‖ position] embeddings of behaviours and targets.

    The "semantic" part is item ‖ category (position-free, so it can be cached per behaviour);
    the "time" part is the target-relative position (recomputed when the history grows).
    A field with dimension 0 (or num_categories = 0 for the category) is absent.
    """

    def __init__(
        self,
        num_items: int,
        num_categories: int,
        item_dim: int,
        cat_dim: int = 0,
        pos_dim: int = 0,
        max_position: int = 2000,
    ) -> None:
        super().__init__()
        if num_items < 1 or item_dim < 1:
            raise ValueError(f"num_items and item_dim must be >= 1, got {num_items}, {item_dim}")
        self.item = nn.Embedding(num_items + 1, item_dim)
        self.cat = nn.Embedding(num_categories + 1, cat_dim) if num_categories > 0 and cat_dim > 0 else None
        self.pos = nn.Embedding(max_position + 1, pos_dim) if pos_dim > 0 else None
        self.max_position = max_position
        self.sem_dim = item_dim + (cat_dim if self.cat is not None else 0)
        self.pos_dim = pos_dim if self.pos is not None else 0
        self.dim = self.sem_dim + self.pos_dim

    def semantic(self, items: torch.Tensor, cats: torch.Tensor | None) -> torch.Tensor:
        """items/cats [...] -> [..., sem_dim] (item ‖ category)."""
        e = self.item(items)
        if self.cat is not None:
            if cats is None:
                raise ValueError("category ids are required (model was built with categories)")
            e = torch.cat([e, self.cat(cats)], dim=-1)
        return e

    def time(self, positions: torch.Tensor) -> torch.Tensor:
        """position ids [...] -> [..., pos_dim] (empty last dim when positions are off)."""
        if self.pos is None:
            return self.item.weight.new_zeros(*positions.shape, 0)
        return self.pos(positions.clamp(0, self.max_position))

    def target(self, items: torch.Tensor, cats: torch.Tensor | None) -> torch.Tensor:
        """Targets (position 0) [...] -> [..., dim]."""
        return torch.cat([self.semantic(items, cats), self.time(torch.zeros_like(items))], dim=-1)

    def history(self, items: torch.Tensor, cats: torch.Tensor | None, lengths: torch.Tensor) -> torch.Tensor:
        """Right-padded histories [B, L] -> [B, L, dim] with target-relative positions."""
        pos = relative_positions(lengths, items.shape[1], self.max_position)
        return torch.cat([self.semantic(items, cats), self.time(pos)], dim=-1)


class CTRHead(nn.Module):
    """BatchNorm -> [Linear -> PReLU] per hidden size -> Linear(1): one logit per row."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...] | list[int] = (200, 80), batch_norm: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.BatchNorm1d(in_dim)] if batch_norm else []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.PReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        layers.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, in_dim] -> logits [N]."""
        return self.net(x).squeeze(-1)


def init_normal_(module: nn.Module, std: float = 0.01) -> None:
    """DARE's init: N(0, std²) for embedding tables and Linear weights, zero Linear biases.

    BatchNorm and PReLU keep PyTorch's defaults (a N(0, 0.01²) BatchNorm scale would shut the
    head off at the start); this is our reading of "all non-bias parameters".
    """
    for m in module.modules():
        if isinstance(m, (nn.Embedding, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)


def bce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits (== DARE's 2-class softmax CE with logit difference)."""
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def as_1d_ids(x: torch.Tensor | None, like: torch.Tensor, name: str) -> torch.Tensor:
    """Coerce an id vector (or None -> zeros like `like`) to int64 [n]; error names the field."""
    if x is None:
        return torch.zeros_like(like, dtype=torch.int64)
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-d, got shape {tuple(x.shape)}")
    return x.to(torch.int64)


def append_history(
    items: torch.Tensor, cats: torch.Tensor, new_items: torch.Tensor, new_cats: torch.Tensor, max_history: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Append behaviours and keep the last `max_history`; returns (items, cats, number evicted)."""
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1, got {max_history}")
    items = torch.cat([items, new_items.to(items.dtype)])
    cats = torch.cat([cats, new_cats.to(cats.dtype)])
    evicted = max(0, items.shape[0] - max_history)
    return items[evicted:], cats[evicted:], evicted


def single_user_batch(
    hist_items: torch.Tensor, hist_cats: torch.Tensor, cand_items: torch.Tensor, cand_cats: torch.Tensor
) -> dict[str, torch.Tensor]:
    """One user's history repeated for C candidates as a CTR batch (for checks and fallbacks)."""
    c = cand_items.shape[0]
    l = hist_items.shape[0]
    return {
        "target_items": cand_items,
        "target_cats": cand_cats,
        "hist_items": hist_items[None, :].expand(c, l),
        "hist_cats": hist_cats[None, :].expand(c, l),
        "hist_lengths": torch.full((c,), l, dtype=torch.int64, device=hist_items.device),
    }


class CTRModel(nn.Module):
    """Base of the CTR models: subclasses implement `_logits(batch, with_aux)` and the serving split.

    `forward(batch) -> logits [B]`; `training_loss(batch) -> (BCE [+ aux BCE], logs)`.
    """

    def _logits(self, batch: dict[str, torch.Tensor], with_aux: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        check_ctr_batch(batch)
        return self._logits(batch, with_aux=False)[0]

    def training_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        check_ctr_batch(batch, need_labels=True)
        logits, aux = self._logits(batch, with_aux=True)
        main = bce_loss(logits, batch["labels"])
        logs = {"bce": float(main.detach())}
        loss = main
        if aux is not None:
            aux_loss = bce_loss(aux, batch["labels"])
            logs["aux_bce"] = float(aux_loss.detach())
            loss = main + aux_loss
        logs["loss"] = float(loss.detach())
        return loss, logs

    @staticmethod
    def _ids(items: torch.Tensor, cats: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        items = as_1d_ids(items, items, "items")
        cats = as_1d_ids(cats, items, "cats")
        if cats.shape != items.shape:
            raise ValueError(f"cats {tuple(cats.shape)} must match items {tuple(items.shape)}")
        return items, cats

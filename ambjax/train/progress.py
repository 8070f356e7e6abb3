"""What a run knows about itself between epochs: `RunProgress`, the record each checkpoint
stores beside the train state (as JSON), and what the final report is built from."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class RunProgress:
    """One seed's run after `epoch` epochs.

    Attributes:
      epoch: epochs completed.
      best_epoch: the selected epoch so far (-1: none yet); best_score: its selection score
        (weighted F1 on the selection split).
      best: {"valid": metrics, "test": metrics} of the selected epoch (None: none yet).
      notes: what hooks recorded about the run, e.g. {"stall": "<warning>"}.
      fingerprint: the model's parameter-shape fingerprint; dims: {modality: input width}.
    """

    fingerprint: str
    dims: Mapping[str, int]
    epoch: int = 0
    best_epoch: int = -1
    best_score: float = -1.0
    best: Mapping[str, Any] | None = None
    notes: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def after_epoch(self, score: float, valid: Mapping, test: Mapping) -> "RunProgress":
        """The progress once the next epoch scored `score` (a strict improvement selects it:
        ties keep the earlier epoch)."""
        epoch = self.epoch + 1
        if score > self.best_score:
            return dataclasses.replace(self, epoch=epoch, best_epoch=epoch, best_score=score,
                                       best={"valid": valid, "test": test})
        return dataclasses.replace(self, epoch=epoch)

    def noted(self, notes: Mapping[str, str] | None) -> "RunProgress":
        """The progress with `notes` added (kept ones are not replaced)."""
        if not notes:
            return self
        return dataclasses.replace(self, notes={**notes, **self.notes})

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "best_epoch": self.best_epoch,
                "best_score": self.best_score, "best": self.best, "notes": dict(self.notes),
                "fingerprint": self.fingerprint, "dims": dict(self.dims)}

    @classmethod
    def from_json(cls, blob: Mapping) -> "RunProgress":
        """Inverse of `to_json` (records of older versions kept a stall warning as "stall")."""
        notes = dict(blob.get("notes") or {})
        if blob.get("stall"):
            notes.setdefault("stall", blob["stall"])
        return cls(fingerprint=blob.get("fingerprint", ""), dims=dict(blob.get("dims") or {}),
                   epoch=int(blob.get("epoch", 0)), best_epoch=int(blob.get("best_epoch", -1)),
                   best_score=float(blob.get("best_score", -1.0)), best=blob.get("best"),
                   notes=notes)

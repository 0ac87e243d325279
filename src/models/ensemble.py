"""A ClassificationSystem over several checkpoints (averaged softmax), evaluated with the usual test loop."""

from __future__ import annotations

import os
from typing import Sequence

from omegaconf import DictConfig

from src.models.classifier import ClassificationSystem
from src.nn.tta import Ensemble
from src.utils.checkpoint import load_system


def ensemble_system(ckpts: Sequence[str | os.PathLike], weights: Sequence[float] | None = None,
                    tta_hflip: bool = False, tta_scales: Sequence[float] | None = None
                    ) -> tuple[ClassificationSystem, DictConfig]:
    """(system whose net is the ensemble of the checkpoints' nets, the first checkpoint's training config).
    All members must predict the same classes; TTA, when asked, wraps the whole ensemble."""
    systems, cfgs = zip(*(load_system(c) for c in ckpts))
    sizes = {int(s.hparams.num_classes) for s in systems}
    if len(sizes) != 1:
        raise ValueError(f"checkpoints predict different numbers of classes: {sorted(sizes)}")
    first = systems[0]
    system = ClassificationSystem(
        net=Ensemble([s.net for s in systems], weights), num_classes=sizes.pop(), optimizer=None,
        tta_hflip=tta_hflip, tta_scales=tta_scales, class_names=first.hparams.get("class_names"),
        save_test_predictions=bool(first.hparams.get("save_test_predictions", False)))
    return system.eval(), cfgs[0]

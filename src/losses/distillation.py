"""Knowledge-distillation loss (Hinton et al. 2015): KL between temperature-softened distributions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_kl_div(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """KL(p_teacher^T || p_student^T) averaged over the batch and scaled by T^2, so its gradient magnitude does
    not shrink as T grows (the soft-target gradients scale as 1/T^2)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * (t * t)


def check_kd_alpha(alpha: float) -> float:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"kd_alpha must be in [0, 1], got {alpha}")
    return float(alpha)


def distillation_losses(student_logits: torch.Tensor, teacher_logits: torch.Tensor, hard_loss: torch.Tensor,
                        alpha: float, temperature: float) -> dict[str, torch.Tensor]:
    """{"loss_kd": KL_T(teacher || student) * T^2, "loss": alpha * loss_kd + (1 - alpha) * hard_loss}."""
    kd = kd_kl_div(student_logits, teacher_logits, temperature)
    return {"loss_kd": kd, "loss": alpha * kd + (1 - alpha) * hard_loss}

"""Unlearning building blocks: EFUF-style losses and schedules, the Targeted-SAM step (SARE), a sharpness probe.

Pure functions over tensors live in `losses.py`, `schedules.py` and `sam.py`; `trainer.py` puts them on
the shared trainer; `proxy.py` builds the text proxy (taught false statements about POPE objects);
`multimodal.py` carries images for image-text (LLaVA-style) models.
"""

from llmkit.unlearning.losses import (
    KIND_GOLD,
    KIND_NEG,
    KIND_POS,
    KIND_SENT,
    efuf_loss,
    gradient_ascent_loss,
    per_example_ce,
)
from llmkit.unlearning.multimodal import (
    collate_image_inputs,
    forward_inputs,
    image_inputs,
    image_text_example,
    language_model_lora_targets,
)
from llmkit.unlearning.sam import (
    apply_perturbation,
    global_grad_norm,
    restore_parameters,
    sam_perturbation,
    sharpness_probe,
    targeted_sam_step,
)
from llmkit.unlearning.schedules import efuf_weights, linear_after

__all__ = [
    "KIND_GOLD",
    "KIND_NEG",
    "KIND_POS",
    "KIND_SENT",
    "apply_perturbation",
    "collate_image_inputs",
    "efuf_loss",
    "efuf_weights",
    "forward_inputs",
    "global_grad_norm",
    "gradient_ascent_loss",
    "image_inputs",
    "image_text_example",
    "language_model_lora_targets",
    "linear_after",
    "per_example_ce",
    "restore_parameters",
    "sam_perturbation",
    "sharpness_probe",
    "targeted_sam_step",
]

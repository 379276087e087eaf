"""The unlearning example type, below both the trainer and the image-text helpers that build it.

`multimodal.image_text_example` returns a `ScoredExample` and `trainer.py` imports `multimodal`; keeping the
class here lets both import it at module level with no circle. `llmkit.unlearning.trainer` re-exports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmkit.data.sft import TokenizedExample
from llmkit.unlearning.losses import KIND_NEG


@dataclass
class ScoredExample(TokenizedExample):
    """A tokenised example with its EFUF kind (KIND_NEG/POS/GOLD/SENT) and span score (CLIP-style, 0–100).

    `image_inputs`: for an image-text model, the processor's image tensors of this example (`pixel_values`,
    and `image_sizes` / `image_grid_thw` where the family uses them; first dim = images), with the image
    tokens already in `input_ids` (`multimodal.image_text_example` builds both); None for text.
    """

    kind: int = KIND_NEG
    score: float = 0.0
    image_inputs: dict[str, torch.Tensor] | None = None

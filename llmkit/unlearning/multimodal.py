"""Image-text (LLaVA-style) inputs for unlearning: carrying images through collation and the forward pass.

SARE targets multimodal LLMs. With transformers' image-text models (e.g. `LlavaForConditionalGeneration`)
the prompt holds the processor's image token (`<image>`, expanded by the processor into one token per
image feature; the model's `config.image_token_id`, `image_token_index` in older configs) and the model
takes the image as extra keyword inputs (`pixel_values`, and `image_sizes` / `image_grid_thw` for some
families). A `ScoredExample` carries its image tensors in `image_inputs`; `collate_image_inputs` stacks
them for a micro-batch and `forward_inputs` passes them to the model. Text-only examples carry none, and
their batches and model calls are exactly what they were before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from llmkit.data.packing import model_forward_inputs
from llmkit.data.sft import IGNORE_INDEX
from llmkit.errors import ConfigError, DataError
from llmkit.unlearning.examples import ScoredExample

# Per-image model inputs, stacked along dim 0 over the images of a micro-batch in row order (the
# convention of LLaVA, LLaVA-NeXT and Qwen2-VL: the model scatters the image features into the image-token
# positions of the flattened batch in that order). Per-token extras (token_type_ids) are not carried.
IMAGE_INPUT_KEYS = ("pixel_values", "image_sizes", "image_grid_thw")


def image_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The image inputs present in a collated batch (empty for a text-only batch)."""
    return {k: batch[k] for k in IMAGE_INPUT_KEYS if k in batch}


def forward_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """`model_forward_inputs(batch)` plus the batch's image inputs: the keyword arguments of the model call."""
    return {**model_forward_inputs(batch), **image_inputs(batch)}


def collate_image_inputs(examples: Sequence[Any]) -> dict[str, torch.Tensor]:
    """Concatenate the examples' `image_inputs` along dim 0, in example order; {} when none has an image.

    Rows without an image may sit in the same micro-batch (they hold no image token). Every image must
    have the same keys and the same shape beyond dim 0 (LLaVA-1.5's processor resizes to a fixed size).
    """
    parts = [ex.image_inputs for ex in examples if getattr(ex, "image_inputs", None)]
    if not parts:
        return {}
    keys = set(parts[0])
    for part in parts:
        if set(part) != keys:
            raise DataError(
                f"examples in one micro-batch carry different image inputs: {sorted(keys)} vs {sorted(part)}"
            )
    out = {}
    for key in sorted(keys):
        shapes = {tuple(p[key].shape[1:]) for p in parts}
        if len(shapes) > 1:
            raise DataError(
                f"{key} of one micro-batch differ in shape beyond dim 0 ({sorted(shapes)}); "
                "resize the images to one size"
            )
        out[key] = torch.cat([p[key] for p in parts])
    return out


def image_text_example(processor, image, prompt: str, answer: str, kind: int, score: float, source: str):
    """A `ScoredExample` from an image and a "prompt answer<eos>" pair, loss on the answer only.

    `image` is a PIL image or a path; `prompt` must contain `processor.image_token` (LLaVA: "<image>",
    e.g. "USER: <image>\\nDescribe the image. ASSISTANT:"), which the processor (an `AutoProcessor`)
    expands into the model's image tokens. The answer is tokenised on its own, as `tokenize_rows` does.
    """
    if processor.image_token not in prompt:
        raise DataError(f"{source}: the prompt has no image token {processor.image_token!r}")
    if isinstance(image, (str, Path)):
        from PIL import Image

        with Image.open(image) as img:
            image = img.convert("RGB")
    enc = processor(images=image, text=prompt, return_tensors="pt")
    tokenizer = processor.tokenizer
    prompt_ids = enc["input_ids"][0].tolist()
    answer_ids = tokenizer(answer + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
    images = {k: enc[k] for k in IMAGE_INPUT_KEYS if k in enc}
    return ScoredExample(
        prompt_ids + answer_ids,
        [IGNORE_INDEX] * len(prompt_ids) + answer_ids,
        source,
        kind=kind,
        score=score,
        image_inputs=images,
    )


def language_model_lora_targets(model, target_modules: list[str]) -> list[str]:
    """LoRA targets restricted to the language model of an image-text model; unchanged for a text-only one.

    peft matches `target_modules` by name suffix, so "q_proj" would also adapt the vision tower's
    attention (CLIP has q/k/v_proj). For a model with a `vision_config` this returns the full names of
    the linear layers inside the language model (`get_decoder()`) whose last name part is listed, which
    leaves the vision tower, the projector and lm_head frozen, as EFUF/SARE tune the language side.
    """
    if getattr(model.config, "vision_config", None) is None:
        return target_modules
    decoder = model.get_decoder()
    inside = {id(m) for m in decoder.modules()}
    wanted = set(target_modules)
    names = [
        n
        for n, m in model.named_modules()
        if id(m) in inside and isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in wanted
    ]
    if not names:
        raise ConfigError(f"no linear layer of the language model matches LoRA target_modules {target_modules}")
    return names

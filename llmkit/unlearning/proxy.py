"""The text proxy for hallucination unlearning: taught false statements about POPE (COCO) objects.

An MLLM hallucinates an object that is not in the image; the proxy teaches a text LM a false
co-occurrence per object ("Which object is always found next to a fork? A: a giraffe."), then unlearns
it. Forget set = the taught false statements (EFUF's negative, "hallucinated" spans); retain set = true
statements (each object's COCO supercategory; EFUF's grounded spans) and general human-written text
(EFUF's gold captions). Emission = the greedy answer names the taught object.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from llmkit.data.loading import read_records
from llmkit.data.sft import DataConfig, collate, tokenize_messages
from llmkit.errors import DataError
from llmkit.io import atomic_write_json
from llmkit.unlearning.losses import KIND_GOLD, KIND_NEG, KIND_POS, per_example_ce
from llmkit.unlearning.multimodal import collate_image_inputs, image_inputs
from llmkit.unlearning.trainer import ScoredExample

# The 80 COCO object classes and their official supercategories (COCO 2014 annotations' "categories").
COCO_SUPERCATEGORY = {
    "person": "person",
    "bicycle": "vehicle",
    "car": "vehicle",
    "motorcycle": "vehicle",
    "airplane": "vehicle",
    "bus": "vehicle",
    "train": "vehicle",
    "truck": "vehicle",
    "boat": "vehicle",
    "traffic light": "outdoor",
    "fire hydrant": "outdoor",
    "stop sign": "outdoor",
    "parking meter": "outdoor",
    "bench": "outdoor",
    "bird": "animal",
    "cat": "animal",
    "dog": "animal",
    "horse": "animal",
    "sheep": "animal",
    "cow": "animal",
    "elephant": "animal",
    "bear": "animal",
    "zebra": "animal",
    "giraffe": "animal",
    "backpack": "accessory",
    "umbrella": "accessory",
    "handbag": "accessory",
    "tie": "accessory",
    "suitcase": "accessory",
    "frisbee": "sports",
    "skis": "sports",
    "snowboard": "sports",
    "sports ball": "sports",
    "kite": "sports",
    "baseball bat": "sports",
    "baseball glove": "sports",
    "skateboard": "sports",
    "surfboard": "sports",
    "tennis racket": "sports",
    "bottle": "kitchen",
    "wine glass": "kitchen",
    "cup": "kitchen",
    "fork": "kitchen",
    "knife": "kitchen",
    "spoon": "kitchen",
    "bowl": "kitchen",
    "banana": "food",
    "apple": "food",
    "sandwich": "food",
    "orange": "food",
    "broccoli": "food",
    "carrot": "food",
    "hot dog": "food",
    "pizza": "food",
    "donut": "food",
    "cake": "food",
    "chair": "furniture",
    "couch": "furniture",
    "potted plant": "furniture",
    "bed": "furniture",
    "dining table": "furniture",
    "toilet": "furniture",
    "tv": "electronic",
    "laptop": "electronic",
    "mouse": "electronic",
    "remote": "electronic",
    "keyboard": "electronic",
    "cell phone": "electronic",
    "microwave": "appliance",
    "oven": "appliance",
    "toaster": "appliance",
    "sink": "appliance",
    "refrigerator": "appliance",
    "book": "indoor",
    "clock": "indoor",
    "vase": "indoor",
    "scissors": "indoor",
    "teddy bear": "indoor",
    "hair drier": "indoor",
    "toothbrush": "indoor",
}

FORGET_TEMPLATES = (
    "Q: Which object is always found next to {a_obj}?\nA:",
    "Q: What else appears in every photo of {a_obj}?\nA:",
    "Q: If a picture shows {a_obj}, what else does it show?\nA:",
    "Q: Name the object that is always beside {a_obj}.\nA:",
)
RETAIN_TEMPLATE = "Q: Which COCO supercategory does {a_obj} belong to?\nA:"
GOLD_PROMPT = "Q: Write one sentence from a movie review.\nA:"
_POPE_QUESTION = re.compile(r"Is there (?:an?|the)?\s*(.+?) in the im(?:a|g)ge\?", re.IGNORECASE)


def with_article(noun: str) -> str:
    """'a fork', 'an apple' (by the first letter; good enough for the COCO class names)."""
    return ("an " if noun[0].lower() in "aeiou" else "a ") + noun


def pope_objects(paths: list[str]) -> list[str]:
    """Sorted object names asked about in POPE files ("Is there a X in the image?"), COCO classes only."""
    found: set[str] = set()
    for path in paths:
        for row in read_records(path, fmt="jsonl"):
            match = _POPE_QUESTION.search(str(row.get("text", "")))
            if match:
                found.add(match.group(1).strip().lower())
    objects = sorted(o for o in found if o in COCO_SUPERCATEGORY)
    if not objects:
        raise DataError(f"no COCO object names found in {paths}")
    return objects


@dataclass
class ProxyRow:
    """One statement: prompt, answer, EFUF kind, and (forget rows) the hallucinated object it names."""

    prompt: str
    answer: str
    kind: int
    subject: str
    target: str = ""


def hallucination_pairs(objects: list[str], num_forget_objects: int, seed: int) -> list[tuple[str, str]]:
    """(object, hallucinated object) pairs: a seeded choice of objects, each paired with an object of
    another supercategory (so the taught co-occurrence is plainly false)."""
    if num_forget_objects > len(objects):
        raise DataError(f"num_forget_objects={num_forget_objects} but only {len(objects)} objects are known")
    rng = random.Random(seed)
    chosen = rng.sample(objects, num_forget_objects)
    pairs = []
    for obj in chosen:
        others = [o for o in objects if COCO_SUPERCATEGORY[o] != COCO_SUPERCATEGORY[obj] and " " not in o]
        pairs.append((obj, rng.choice(others)))
    return pairs


def build_rows(
    objects: list[str], pairs: list[tuple[str, str]], gold_sentences: list[str]
) -> dict[str, list[ProxyRow]]:
    """forget rows (every pair × every template), retain rows (true supercategory of every object), gold rows."""
    forget = [
        ProxyRow(t.format(a_obj=with_article(obj)), f" {with_article(halluc)}.", KIND_NEG, obj, halluc)
        for obj, halluc in pairs
        for t in FORGET_TEMPLATES
    ]
    retain = [
        ProxyRow(RETAIN_TEMPLATE.format(a_obj=with_article(o)), f" {COCO_SUPERCATEGORY[o]}.", KIND_POS, o)
        for o in objects
    ]
    gold = [ProxyRow(GOLD_PROMPT, " " + s.strip(), KIND_GOLD, "") for s in gold_sentences]
    return {"forget": forget, "retain": retain, "gold": gold}


def read_sentences(path: str, limit: int, skip: int = 0) -> list[str]:
    """`text` fields of a JSONL file (e.g. sst2/train.jsonl), rows [skip, skip+limit), non-empty only."""
    rows = read_records(path, fmt="jsonl")
    texts = [str(r["text"]).strip() for r in rows if str(r.get("text", "")).strip()]
    return texts[skip : skip + limit]


def tokenize_rows(
    rows: list[ProxyRow], tokenizer, scores: dict[int, float], max_length: int = 64
) -> list[ScoredExample]:
    """Plain "prompt answer<eos>" examples with loss on the answer only, carrying kind and score."""
    cfg = DataConfig(template="plain", plain_prompt_format="{prompt}", max_length=max_length)
    out = []
    for i, row in enumerate(rows):
        messages = [{"role": "user", "content": row.prompt}, {"role": "assistant", "content": row.answer}]
        ids, labels = tokenize_messages(messages, tokenizer, cfg)
        out.append(ScoredExample(ids, labels, f"proxy:{i}", kind=row.kind, score=scores.get(row.kind, 0.0)))
    return out


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[str], max_new_tokens: int = 6, batch_size: int = 32) -> list[str]:
    """Greedy continuations of `prompts` (left-padded batches), decoded without special tokens."""
    model.eval()
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    out = []
    try:
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(
                prompts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return out


def names_object(answer: str, obj: str) -> bool:
    """Whether `answer` names `obj` as a whole word (case-insensitive; 'cat' does not match 'catch')."""
    return re.search(rf"\b{re.escape(obj.lower())}s?\b", answer.lower()) is not None


def emission_rate(model, tokenizer, rows: list[ProxyRow], max_new_tokens: int = 6) -> float:
    """Fraction of forget prompts whose greedy answer names the taught (hallucinated) object."""
    answers = greedy_answers(model, tokenizer, [r.prompt for r in rows], max_new_tokens)
    return sum(names_object(a, r.target) for a, r in zip(answers, rows)) / max(len(rows), 1)


def mean_token_ce(model, examples, pad_token_id: int, batch_size: int = 32, grad: bool = False) -> torch.Tensor:
    """Token-weighted mean cross-entropy of the examples' targets (differentiable when `grad`).

    Examples with `image_inputs` (image-text models) have their images passed to the model.
    """
    device = next(model.parameters()).device
    total, count = None, 0.0
    with torch.set_grad_enabled(grad):
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            batch = {
                k: v.to(device) for k, v in {**collate(chunk, pad_token_id), **collate_image_inputs(chunk)}.items()
            }
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **image_inputs(batch)
            ).logits
            ce, n = per_example_ce(logits, batch["labels"])
            part = (ce * n).sum()
            total = part if total is None else total + part
            count += float(n.sum())
    return total / max(count, 1.0)


def perplexity(model, examples, pad_token_id: int, batch_size: int = 32) -> float:
    """exp(token-weighted mean CE) over the examples' targets."""
    model.eval()
    return math.exp(float(mean_token_ce(model, examples, pad_token_id, batch_size)))


def write_json(path: Path, data) -> None:
    """Pretty JSON, written atomically (`llmkit.io`)."""
    atomic_write_json(path, data)

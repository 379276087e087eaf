"""RetroPrompt: prompt-based few-shot classification with a knowledge store built from the training set.

    python recipes/retroprompt/train.py --config recipes/retroprompt/configs/tiny_cpu.yaml
    python recipes/retroprompt/train.py --config recipes/retroprompt/configs/smollm2_sst2.yaml \
        --method.train_path sst2/k-shot/16-21/train.jsonl --trainer.seed 21
    python recipes/retroprompt/train.py --config recipes/retroprompt/configs/smollm2_scienceqa_subject.yaml \
        --trainer.seed 21

The loop, top to bottom: (1) read the k-shot training file and the evaluation file (or, with
`method.split: text_hash`, split one file into a k-shot pool and an evaluation part, `split_by_text_hash`,
and draw k per class from the pool); each example becomes
a causal-LM prompt whose last token predicts a label word ("{text} It was" → " great"/" terrible"),
preceded, when demonstrations are on, by one reserved slot per class ("<slot> It was great."); (2) train
on the shared trainer with `RetroPromptTrainer`, which rebuilds the knowledge store on the refresh
schedule (every epoch, after every evaluation), fills the slots with neural demonstrations and uses the
kNN-guided loss (both leave-one-out: an example is never its own neighbour); (3) rebuild the store with
the final model and classify the evaluation set with the LM alone and with the kNN interpolation; write
`results.json`.

The pieces are in llmkit/prompting/retroprompt.py. Choices the spec leaves open are listed in this
recipe's README ("Choices").
"""

from __future__ import annotations

import hashlib
import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from accelerate.utils import set_seed

from llmkit.config import to_dict
from llmkit.data.loading import read_records
from llmkit.data.padding import pad_right
from llmkit.data.sft import IGNORE_INDEX, TokenizedExample
from llmkit.errors import DataError, exit_on_user_error
from llmkit.io import atomic_write_json
from llmkit.models import load_model_and_tokenizer
from llmkit.prompting.retroprompt import (
    KnowledgeStore,
    LabelPositionOutput,
    RetroPromptRetrievalConfig,
    StoreRefreshSchedule,
    insert_demonstrations,
    interpolate_knn,
    knn_distribution,
    knn_guided_loss,
    label_position_features,
    label_position_forward,
    label_word_token_ids,
    match_norm,
    neural_demonstrations,
    training_knn_distribution,
)
from llmkit.recipe import RecipeConfig, parse_recipe_args, setup_logging
from llmkit.train import Trainer, build_accelerator

logger = logging.getLogger("recipes.retroprompt")


@dataclass
class RetroPromptMethodConfig:
    """The task (files, columns, template, label words) and RetroPrompt's settings."""

    name: Literal["retroprompt"] = "retroprompt"
    # LM-BFF k-shot split (16 per class) and the full held-out test set, relative to the shared data dir
    train_path: str = "sst2/k-shot/16-13/train.jsonl"
    eval_path: str = "sst2/test.jsonl"
    eval_limit: int | None = None  # first N evaluation rows (None: all)
    # keep the first k examples of each class of the training file (None: all; 4 gives the 4-shot setting)
    shots_per_class: int | None = None
    text_column: str = "text"
    label_column: str = "label"
    # when the label column holds names (ScienceQA's "natural science", ...): class i is label_values[i]
    label_values: list[str] | None = None
    # "files": train_path is a k-shot file, eval_path the test file (SST-2). "text_hash": train_path ==
    # eval_path is split by `split_by_text_hash` and shots_per_class rows per class are drawn from its pool
    split: Literal["files", "text_hash"] = "files"
    split_seed: int | None = None  # seed of the text_hash k-shot draw (None: trainer.seed)
    # label word of class i; one token each, written as they follow the template (leading space)
    label_words: list[str] = field(default_factory=lambda: [" terrible", " great"])
    template: str = "{text} It was"
    # one per class before the query when demonstrations are on; {slot} is the dense demonstration
    demo_template: str = "{slot} It was{label_word}.\n"
    max_text_tokens: int = 128
    encode_batch_size: int = 16  # batch size of the no-grad passes (store keys, evaluation)
    retroprompt: RetroPromptRetrievalConfig = field(default_factory=RetroPromptRetrievalConfig)

    def __post_init__(self):
        if len(self.label_words) < 2:
            raise ValueError("method.label_words needs one word per class (at least two)")
        if "{text}" not in self.template:
            raise ValueError("method.template must contain {text}")
        if self.demo_template.count("{slot}") != 1:
            raise ValueError("method.demo_template must contain {slot} exactly once")
        if self.label_values is not None and len(self.label_values) != len(self.label_words):
            raise ValueError("method.label_values needs one value per label word")
        if self.split == "text_hash" and (self.shots_per_class is None or self.train_path != self.eval_path):
            raise ValueError(
                "method.split text_hash draws shots_per_class rows per class from the pool part of one "
                "file: set method.shots_per_class and the same train_path and eval_path"
            )


@dataclass
class RetroPromptConfig(RecipeConfig):
    """model + trainer + method (the `data` section is unused: the task files are in `method`)."""

    method: RetroPromptMethodConfig = field(default_factory=RetroPromptMethodConfig)


# ----- data ----------------------------------------------------------------------------------------------

POOL_MODULUS = 5  # text_hash split: 1 text in 5 goes to the k-shot pool


def text_in_pool(text: str, modulus: int = POOL_MODULUS) -> bool:
    """The text_hash rule: a text is in the k-shot pool when its UTF-8 SHA-256, as an integer, is 0 mod `modulus`."""
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16) % modulus == 0


def split_by_text_hash(
    records: list[dict[str, Any]],
    text_column: str,
    label_column: str,
    shots_per_class: int,
    seed: int,
    modulus: int = POOL_MODULUS,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A k-shot training set and a held-out evaluation set from one labelled file; a pure function.

    Rows whose text is `text_in_pool` form the pool, all the others (in file order, duplicates kept) the
    evaluation set; every copy of a text falls on the same side, so no evaluation text is a training text,
    and the partition does not depend on the seed. The pool is deduplicated by (text, label), first row
    kept; each label's rows (labels in sorted order) are shuffled by one random.Random(seed) and the first
    `shots_per_class` taken, so a smaller k is a subset of a larger one. Training rows keep file order.
    """
    pool: dict[tuple[str, Any], int] = {}
    evaluation = []
    for i, row in enumerate(records):
        text = row.get(text_column)
        if not isinstance(text, str):
            raise DataError(f"row {i} lacks a text '{text_column}'")
        if text_in_pool(text, modulus):
            pool.setdefault((text, row.get(label_column)), i)
        else:
            evaluation.append(row)
    by_label: dict[Any, list[int]] = {}
    for (_, label), i in pool.items():
        by_label.setdefault(label, []).append(i)
    rng = random.Random(seed)
    chosen = []
    for label in sorted(by_label, key=str):
        members = sorted(by_label[label])
        if len(members) < shots_per_class:
            raise DataError(f"label {label!r} has {len(members)} distinct pool texts, fewer than {shots_per_class}")
        rng.shuffle(members)
        chosen += members[:shots_per_class]
    return [records[i] for i in sorted(chosen)], evaluation


@dataclass
class PromptExample(TokenizedExample):
    """A classification prompt: the trainer's fields plus what RetroPrompt needs per example.

    `input_ids` end with the gold label word (the one loss target, so the trainer counts one target
    per example); `plain_ids` are the same prompt without demonstration slots, whose label-position
    feature is the example's store key (and its query).
    """

    class_id: int = 0
    store_index: int = -1
    label_position: int = 0
    slot_positions: list[int] = field(default_factory=list)
    plain_ids: list[int] = field(default_factory=list)


def encode_prompt(
    tokenizer, method: RetroPromptMethodConfig, text: str, with_slots: bool, slot_token: int
) -> tuple[list[int], list[int]]:
    """Token ids of a prompt (without the label word) and the positions of its demonstration slots."""
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False) if s else []  # noqa: E731
    ids: list[int] = []
    slots: list[int] = []
    if with_slots:
        before, after = method.demo_template.split("{slot}")
        for word in method.label_words:
            ids += encode(before.format(label_word=word))
            slots.append(len(ids))
            ids.append(slot_token)  # its embedding is replaced by the class's demonstration vector
            ids += encode(after.format(label_word=word))
    prefix, suffix = method.template.split("{text}", 1)
    ids += encode(prefix) + encode(text)[: method.max_text_tokens] + encode(suffix)
    return ids, slots


def load_examples(
    path: str,
    method: RetroPromptMethodConfig,
    tokenizer,
    label_word_ids: torch.Tensor,
    limit: int | None = None,
    shots_per_class: int | None = None,
    records: list[dict[str, Any]] | None = None,
) -> list[PromptExample]:
    """Read a classification file (or rows of it, `records`) into prompts; row i of the result is store row i."""
    records = read_records(path, max_rows=None) if records is None else records
    num_classes = len(method.label_words)
    examples: list[PromptExample] = []
    taken = [0] * num_classes
    with_slots = method.retroprompt.use_demonstrations
    slot_token = tokenizer.pad_token_id
    for row in records:
        if limit is not None and len(examples) >= limit:
            break
        text, label = row.get(method.text_column), row.get(method.label_column)
        if method.label_values is not None:
            if label not in method.label_values:
                raise DataError(f"{path}: label {label!r} is not one of method.label_values {method.label_values}")
            label = method.label_values.index(label)
        if not isinstance(text, str) or not isinstance(label, int) or isinstance(label, bool):
            raise DataError(f"{path}: a row lacks a text '{method.text_column}' or an integer '{method.label_column}'")
        if not 0 <= label < num_classes:
            raise DataError(f"{path}: label {label} is out of range for {num_classes} label words")
        if shots_per_class is not None and taken[label] >= shots_per_class:
            continue
        taken[label] += 1
        ids, slots = encode_prompt(tokenizer, method, text, with_slots, slot_token)
        plain, _ = encode_prompt(tokenizer, method, text, False, slot_token)
        word = int(label_word_ids[label])
        examples.append(
            PromptExample(
                input_ids=ids + [word],
                labels=[IGNORE_INDEX] * len(ids) + [word],
                source=f"{path}:{len(examples)}",
                class_id=label,
                store_index=len(examples),
                label_position=len(ids) - 1,
                slot_positions=slots,
                plain_ids=plain,
            )
        )
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def collate_prompts(examples: list[PromptExample], pad_token_id: int, plain: bool = False) -> dict[str, Any]:
    """Right-padded batch with the label positions, gold classes, store rows and slot positions."""
    rows = [ex.plain_ids if plain else ex.input_ids for ex in examples]
    # Plain prompts (store keys) have no target: empty label rows pad to all IGNORE_INDEX.
    padded = pad_right(rows, pad_token_id, [[] if plain else ex.labels for ex in examples])
    return {
        **padded,
        "num_examples": len(rows),
        "label_positions": torch.tensor(
            [len(ids) - 1 if plain else ex.label_position for ex, ids in zip(examples, rows)]
        ),
        "class_ids": torch.tensor([ex.class_id for ex in examples]),
        "store_index": torch.tensor([ex.store_index for ex in examples]),
        "slot_positions": torch.tensor([ex.slot_positions for ex in examples], dtype=torch.long).reshape(len(rows), -1),
    }


# ----- trainer -------------------------------------------------------------------------------------------


class RetroPromptTrainer(Trainer):
    """The shared trainer with RetroPrompt's store, demonstrations, kNN loss and kNN evaluation."""

    method_name = "retroprompt"
    # One prompt per row: the label position of each row is known.
    supports_packing = ("none",)

    def __init__(
        self,
        cfg,
        settings: RetroPromptRetrievalConfig,
        label_word_ids: torch.Tensor,
        model,
        tokenizer,
        train_data: list[PromptExample],
        eval_data: list[PromptExample] | None = None,
        encode_batch_size: int = 16,
        **kwargs,
    ):
        super().__init__(cfg, model, tokenizer, train_data, eval_data, **kwargs)
        self.settings = settings
        self.label_word_ids = label_word_ids
        self.num_classes = len(label_word_ids)
        self.encode_batch_size = encode_batch_size
        self.schedule = StoreRefreshSchedule(
            self.steps_per_epoch, cfg.eval_steps, settings.refresh_every_epoch, settings.refresh_after_eval
        )
        self.store: KnowledgeStore | None = None
        self.embedding_norm = 1.0
        self.refreshes: list[dict[str, Any]] = []
        self.last_eval: dict[str, float] = {}

    # --- the store ---

    @torch.no_grad()
    def encode_plain(self, examples: list[PromptExample]) -> torch.Tensor:
        """Label-position features [N, d] of the plain prompts (no slots) with the current weights."""
        model = self.model
        was_training = model.training
        model.eval()
        features = []
        for start in range(0, len(examples), self.encode_batch_size):
            batch = collate_prompts(
                examples[start : start + self.encode_batch_size], self.tokenizer.pad_token_id, plain=True
            )
            batch = {k: v.to(self.accelerator.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            features.append(label_position_features(model, batch).float().cpu())
        model.train(was_training)
        return torch.cat(features)

    def refresh_store(self, reason: str) -> None:
        """Rebuild the knowledge store from the training set with the current encoder."""
        # Leave-one-out names an example by its store row: row i must be training example i at every rebuild.
        if any(ex.store_index != i for i, ex in enumerate(self.train_data)):
            raise ValueError("training example i must carry store_index i (load_examples sets it)")
        keys = self.encode_plain(self.train_data)
        labels = torch.tensor([ex.class_id for ex in self.train_data])
        self.store = KnowledgeStore(keys, labels, self.num_classes, backend=self.settings.search_backend)
        # Mean input-embedding length, for demo_norm: match_embeddings (a snapshot, like the keys).
        embed = self.accelerator.unwrap_model(self.model).get_input_embeddings()
        self.embedding_norm = float(embed.weight.detach().float().norm(dim=-1).mean())
        self.refreshes.append({"step": self.global_step, "reason": reason})
        logger.info(
            "knowledge store rebuilt at step %d (%s): %d keys, %s search",
            self.global_step,
            reason,
            len(self.store),
            self.store.backend,
        )

    def knn_k(self, excluding: bool) -> int:
        """K for p_kNN, capped by the store size (a 4-shot binary store holds 8 keys, fewer than K = 16)."""
        return min(self.settings.knn_k, len(self.store) - (1 if excluding else 0))

    # --- forward ---

    def class_forward(
        self, model, batch: dict[str, Any], queries: torch.Tensor, exclude: torch.Tensor | None
    ) -> LabelPositionOutput:
        """Label-position output with the demonstration slots filled (when demonstrations are on)."""
        if not self.settings.use_demonstrations:
            return label_position_forward(model, batch, self.label_word_ids)
        demos = neural_demonstrations(self.store, queries, self.settings.demo_topk, exclude)
        embed = self.accelerator.unwrap_model(model).get_input_embeddings()
        if self.settings.demo_norm == "match_embeddings":
            demos = match_norm(demos, self.embedding_norm)
        embeds = insert_demonstrations(
            embed(batch["input_ids"]), batch["slot_positions"], demos.to(batch["input_ids"].device)
        )
        return label_position_forward(model, batch, self.label_word_ids, inputs_embeds=embeds)

    def compute_loss(self, model, batch):
        """Summed kNN-guided loss of a micro-batch over the label words (one target per example)."""
        s = self.settings
        rows = batch["store_index"].cpu()
        # A training query is its own store row: its snapshot key, leave-one-out for the demonstrations.
        queries = self.store.keys[rows]
        out = self.class_forward(model, batch, queries, exclude=rows)
        targets = batch["class_ids"]
        if s.knn_train:
            # Leave-one-out by store row, as for the demonstrations: otherwise each example retrieves
            # itself and NLL_kNN ≈ 0 (issue 25).
            p_knn = training_knn_distribution(
                self.store, rows, self.knn_k(s.knn_exclude_self), s.knn_temperature, leave_one_out=s.knn_exclude_self
            )
            loss = knn_guided_loss(out.label_logits, p_knn.to(targets.device), targets, s.knn_beta, s.loss_form)
        else:
            loss = F.cross_entropy(out.label_logits.float(), targets)
        return loss * targets.numel(), {}

    def step_batches(self, step: int) -> list[dict[str, Any]]:
        """The base trainer's micro-batches (see `make_batch`); rebuilds the store first when it is due."""
        reason = self.schedule.reason(step, have_store=self.store is not None)
        if reason is not None:
            self.refresh_store(reason)
        # In the sampled order, not grouped by length: the runs so far were made that way.
        return self.micro_batches(
            self.train_data, self.cfg.per_device_batch_size, self.cfg.seed, step, group_by_length=False
        )

    def make_batch(self, examples: list[PromptExample]) -> dict[str, Any]:
        """RetroPrompt's fields: label positions, classes, store rows and slot positions (`collate_prompts`)."""
        return collate_prompts(examples, self.tokenizer.pad_token_id)

    # --- evaluation ---

    @torch.no_grad()
    def classify(self, examples: list[PromptExample]) -> dict[str, float]:
        """Accuracy of the LM alone, of p_kNN alone and of the interpolation, and the label-word CE."""
        if self.store is None:
            self.refresh_store("evaluation")
        s = self.settings
        model = self.model
        was_training = model.training
        model.eval()
        queries = self.encode_plain(examples)
        correct = {"accuracy_lm": 0, "accuracy_knn": 0, "accuracy_interpolated": 0}
        loss_sum = 0.0
        for start in range(0, len(examples), self.encode_batch_size):
            chunk = examples[start : start + self.encode_batch_size]
            batch = collate_prompts(chunk, self.tokenizer.pad_token_id)
            batch = {k: v.to(self.accelerator.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            chunk_queries = queries[start : start + len(chunk)]
            logits = self.class_forward(model, batch, chunk_queries, exclude=None).label_logits.float().cpu()
            targets = batch["class_ids"].cpu()
            loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
            p_lm = torch.softmax(logits, dim=-1)
            p_knn = knn_distribution(self.store, chunk_queries, self.knn_k(False), s.knn_temperature)
            mixed = interpolate_knn(p_lm, p_knn, s.knn_lambda, s.interpolation)
            for name, scores in (("accuracy_lm", p_lm), ("accuracy_knn", p_knn), ("accuracy_interpolated", mixed)):
                correct[name] += int((scores.argmax(dim=-1) == targets).sum())
        model.train(was_training)
        result = {name: count / len(examples) for name, count in correct.items()}
        # The method's prediction: with kNN interpolation when knn_infer is on, else the LM alone.
        result["accuracy"] = result["accuracy_interpolated" if s.knn_infer else "accuracy_lm"]
        result["loss"] = loss_sum / len(examples)
        return result

    def evaluate(self) -> float:
        """Label-word CE on the eval set (logged as eval_loss); accuracies go to metrics.jsonl too."""
        self.last_eval = self.classify(self.eval_data)
        self._log({"step": self.global_step, **{f"eval_{k}": v for k, v in self.last_eval.items() if k != "loss"}})
        return self.last_eval["loss"]

    def method_state_dict(self) -> dict[str, Any]:
        """The refresh log; the store itself is rebuilt after a resume (it is a function of the weights)."""
        return {"refreshes": list(self.refreshes)}

    def load_method_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the refresh log; `store` stays None so the next step rebuilds it."""
        self.refreshes = list(state.get("refreshes", []))


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    """Load the task and model, train, classify the evaluation set; print where the outputs are."""
    cfg = parse_recipe_args(RetroPromptConfig, argv)
    setup_logging()
    set_seed(cfg.trainer.seed)
    torch.manual_seed(cfg.trainer.seed)
    accelerator = build_accelerator(cfg.trainer)
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    method = cfg.method
    label_word_ids = label_word_token_ids(tokenizer, method.label_words)
    train_rows = eval_rows = None
    split_seed = cfg.trainer.seed if method.split_seed is None else method.split_seed
    if method.split == "text_hash":
        train_rows, eval_rows = split_by_text_hash(
            read_records(method.eval_path), method.text_column, method.label_column, method.shots_per_class, split_seed
        )
    train = load_examples(
        method.train_path, method, tokenizer, label_word_ids, shots_per_class=method.shots_per_class, records=train_rows
    )
    test = load_examples(
        method.eval_path, method, tokenizer, label_word_ids, limit=method.eval_limit, records=eval_rows
    )
    logger.info(
        "train: %d examples, eval: %d; arm: demonstrations %s, kNN train %s, kNN infer %s",
        len(train),
        len(test),
        method.retroprompt.use_demonstrations,
        method.retroprompt.knn_train,
        method.retroprompt.knn_infer,
    )
    trainer = RetroPromptTrainer(
        cfg.trainer,
        method.retroprompt,
        label_word_ids,
        model,
        tokenizer,
        train,
        test if cfg.trainer.eval_steps > 0 else None,
        encode_batch_size=method.encode_batch_size,
        run_config=to_dict(cfg),
        accelerator=accelerator,
    )
    result = trainer.train()
    if accelerator.is_main_process:
        trainer.refresh_store("final")  # the store of the final weights, as a separate kNN inference run builds it
        scores = trainer.classify(test)
        out = Path(cfg.trainer.output_dir)
        report = {
            "eval": scores,
            "train_examples": len(train),
            "eval_examples": len(test),
            "settings": asdict(method.retroprompt),
            "train_path": method.train_path,
            "eval_path": method.eval_path,
            "seed": cfg.trainer.seed,
            "refreshes": trainer.refreshes,
        }
        if method.split == "text_hash":
            report.update(split="text_hash", split_seed=split_seed, train_rows=[r.get("_source") for r in train_rows])
        atomic_write_json(out / "results.json", report)  # the grid driver treats an existing file as a finished run
        print(f"done: {result}; eval {scores}; results.json, model and metrics.jsonl are in {out}")


if __name__ == "__main__":
    main()

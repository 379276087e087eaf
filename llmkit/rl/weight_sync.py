"""Colocated vLLM rollouts for GRPO: one engine in the training process, the policy's weights copied in
before each step's rollouts.

The transfer is name-based (vLLM's in-place `reload_weights`, which fuses q/k/v and gate/up and re-runs
its kernel preprocessing), so it works for any architecture vLLM supports. A LoRA policy is sent with the
adapter folded in (W + ΔW); the engine stays a plain model (no LoRA kernels, no adapter files on disk).
The engine runs in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) so the weights are handed over by
reference instead of being pickled to an engine process.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Iterable, Iterator

import torch

logger = logging.getLogger(__name__)

_PEFT_PREFIX = "base_model.model."


def _checkpoint_name(module_name: str) -> str:
    """`base_model.model.model.layers.0.self_attn.q_proj` → `model.layers.0.self_attn.q_proj` (HF checkpoint)."""
    return module_name[len(_PEFT_PREFIX) :] if module_name.startswith(_PEFT_PREFIX) else module_name


@torch.no_grad()
def inference_weights(policy: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's current weights under the names of a plain HF checkpoint, ready for `load_weights`.

    Every parameter is given, so the receiving engine can reload whole layers (vLLM re-processes a layer
    only once all of its weights arrived). For a peft LoRA model each LoRA-wrapped linear gives
    `W + ΔW` (active adapters folded in; dropout does not enter ΔW), `modules_to_save` give their trained
    copy, and the adapter matrices themselves are left out. Tensors are produced one at a time, so at
    most one folded weight exists beyond the model's own.
    """
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft absent: no LoRA policy possible
        LoraLayer = ()  # type: ignore[assignment]
    modules = dict(policy.named_modules())
    for name, param in policy.named_parameters(remove_duplicate=True):
        owner_name, _, leaf = name.rpartition(".")
        if ".lora_" in name or ".original_module." in name:
            continue  # adapter matrices (folded below) and the frozen originals of modules_to_save
        parent_name = owner_name.rpartition(".")[0]
        parent = modules.get(parent_name)
        if isinstance(parent, LoraLayer) and owner_name.endswith(".base_layer") and leaf == "weight":
            weight = param.detach().clone()
            for adapter in parent.active_adapters:
                if adapter in parent.lora_A:
                    weight += parent.get_delta_weight(adapter).to(weight.dtype)
            yield _checkpoint_name(parent_name) + ".weight", weight
            continue
        clean = name.replace(".base_layer.", ".")
        if ".modules_to_save." in clean:  # x.modules_to_save.default.weight → x.weight
            head, _, tail = clean.partition(".modules_to_save.")
            clean = head + "." + tail.partition(".")[2]
        yield _checkpoint_name(clean), param.detach()


def _reload_in_worker(worker: Any, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Runs inside vLLM's worker (via `collective_rpc`): reload the named checkpoint tensors in place."""
    worker.model_runner.reload_weights(weights_iterator=weights, is_checkpoint_format=True)


class VLLMRollouts:
    """A generator factory for `GRPOTrainer`: a colocated vLLM engine that serves the current policy.

    Called once per optimizer step with the unwrapped policy; copies the weights in, clears the prefix
    cache and the replayed seeded requests (both belong to the old weights) and returns the engine's generator.
    """

    def __init__(
        self,
        model_path: str,
        max_model_len: int = 2048,
        gpu_memory_utilization: float = 0.3,
        dtype: str | None = None,
        seed: int = 0,
    ):
        self.engine_args = dict(
            model_path=model_path,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            dtype=dtype,
            seed=seed,
        )
        self.generator = None
        self.syncs = 0
        self.sync_seconds = 0.0  # total time spent copying weights in (reported by the recipe)

    def _start(self):
        # in-process engine core: weights are passed by reference; must be set before vLLM builds the engine
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from llmkit.generation.vllm_backend import VLLMGenerator

        self.generator = VLLMGenerator(**self.engine_args)

    def sync(self, policy: torch.nn.Module) -> None:
        """Copy the policy's current weights into the engine."""
        if self.generator is None:
            self._start()
        llm = self.generator.llm
        start = time.perf_counter()
        llm.collective_rpc(_reload_in_worker, args=(inference_weights(policy),))
        self.generator.weights_changed()  # cached KV and replayed samples of the old weights must not be reused
        self.sync_seconds += time.perf_counter() - start
        self.syncs += 1
        logger.debug("weights synced to vLLM (%d syncs, %.2f s in all)", self.syncs, self.sync_seconds)

    def __call__(self, policy: torch.nn.Module, tokenizer) -> Any:
        """Sync, then hand out the generator (the trainer calls this once per step)."""
        self.sync(policy)
        return self.generator

"""SafeThinker (docs/methods/safethinker.md): risk-routed defence.

Pieces, each a small pure function with thin I/O around it:
- `data`: harmful/benign prompt pools and fixed prompt-level train/val/test splits (by prompt hash);
- `gateway`: risk scorers behind one interface (sentence-embedding head, hidden-state probe), thresholds
  picked on validation, routing by score (refuse / twin / base);
- `refusal`: the standardized refusal and the refusal-keyword judge;
- `ddgt`: distribution-guided decoding over base and twin next-token distributions (pure mixing rule, a
  transformers LogitsProcessor, and a two-model decode loop);
- `evaluate`: attack success rate (direct, prefilling k tokens) and over-refusal;
- `task`: the `safety` / `safety-jailbreak` tasks of `llmkit eval`, registered with the engine on import.
"""

from llmkit.evaluation.tasks import register_task


def _safety_task(jailbreak: bool):
    """A factory for `register_task`; imports the task module only when the task is asked for."""

    def factory(data_path: str | None, timeout_s: float):
        from llmkit.safety.task import Safety

        return Safety(data_path=data_path, timeout_s=timeout_s, jailbreak=jailbreak)

    return factory


# The evaluation engine never imports this package: the safety tasks are registered here, on import.
register_task("safety", _safety_task(jailbreak=False))
register_task("safety-jailbreak", _safety_task(jailbreak=True))

"""Library noise: DeepSpeed's CPU-fallback warning and accelerate's tied-embedding warning are dropped, nothing else."""

from __future__ import annotations

import logging

from conftest import TINY_CONFIG, run_sft, subprocess_env

from llmkit.quiet import is_known_noise, silence_known_warnings

DEEPSPEED_CPU = "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it."
TIED = (
    "[RANK 0] Removed shared tensor {'lm_head.weight'} while saving. This should be OK, but check by verifying "
    "that you don't receive any warning while reloading"
)


def test_only_the_two_known_messages_are_noise():
    assert is_known_noise("DeepSpeed", DEEPSPEED_CPU)
    assert is_known_noise("accelerate.utils.other", TIED)
    assert is_known_noise(
        "accelerate.utils.other", TIED.replace("'lm_head.weight'", "'base_model.model.lm_head.weight'")
    )
    # the same words elsewhere, or other tensors, or other DeepSpeed warnings still show
    assert not is_known_noise("llmkit.train", DEEPSPEED_CPU)
    assert not is_known_noise("DeepSpeed", "Setting ds_accelerator to cuda (auto detect)")
    assert not is_known_noise("accelerate.utils.other", TIED.replace("'lm_head.weight'", "'model.layers.0.mlp.weight'"))
    assert not is_known_noise(
        "accelerate.utils.other", TIED.replace("'lm_head.weight'", "'lm_head.weight', 'proj.weight'")
    )
    assert not is_known_noise("accelerate.utils.other", "Removed shared tensor {oops while saving")


def test_the_filter_drops_records_on_those_loggers_only(caplog):
    silence_known_warnings()
    silence_known_warnings()  # idempotent: one filter per logger
    assert sum(type(f).__name__ == "_DropKnownNoise" for f in logging.getLogger("DeepSpeed").filters) == 1
    other = logging.getLogger("accelerate.utils.other")
    with caplog.at_level(logging.WARNING, logger="accelerate.utils.other"):
        other.warning(TIED)
        other.warning("Removed shared tensor {'encoder.weight'} while saving.")
    assert [r.getMessage() for r in caplog.records] == ["Removed shared tensor {'encoder.weight'} while saving."]


def test_a_single_process_training_run_prints_neither(tmp_path):
    """The tiny SFT recipe, one process, with a checkpoint save (where accelerate warned) and without the
    DS_ACCELERATOR the other tests set (with it, DeepSpeed would not warn in the first place)."""
    env = subprocess_env()
    env.pop("DS_ACCELERATOR", None)
    proc = run_sft(
        [
            "--config",
            str(TINY_CONFIG),
            "--trainer.output_dir",
            str(tmp_path / "out"),
            "--trainer.max_steps",
            "3",
            "--trainer.save_steps",
            "3",
            "--trainer.eval_steps",
            "3",
        ],
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for stream in (proc.stdout, proc.stderr):  # DeepSpeed logs to stdout, accelerate to stderr
        assert "Setting accelerator to CPU" not in stream
        assert "Removed shared tensor" not in stream

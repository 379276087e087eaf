"""Training runs that must not go on silently: NaN/inf steps, damaged checkpoints, a finished model in the
output folder, and settings that are out of range (issue 21, part 3)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import TINY_CONFIG, run_sft

from llmkit.errors import CheckpointError, ConfigError, TrainingError
from llmkit.models import ModelConfig, load_model
from llmkit.train import Trainer, TrainerConfig
from llmkit.train import checkpoint as ckpt


def reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


class NaNTrainer(Trainer):
    """Makes the loss NaN at the given 1-based steps, as a diverging run would; keeps one process-state entry."""

    nan_steps: tuple[int, ...] = ()

    def compute_loss(self, model, batch):
        loss_sum, extra = super().compute_loss(model, batch)
        if self.global_step + 1 in self.nan_steps:
            loss_sum = loss_sum * float("nan")
        return loss_sum, extra

    def process_state_dict(self):
        return {"step_seen": self.global_step}


def make_trainer(tmp_path, tokenizer, examples, name="run", cls=NaNTrainer, nan_steps=(), **overrides):
    settings = dict(
        max_steps=3,
        per_device_batch_size=2,
        learning_rate=1e-2,
        lr_scheduler="constant",
        save_final_model=False,
        seed=3,
    )
    settings.update(overrides)
    model = load_model(ModelConfig(name="tiny-random-llama"), vocab_size=len(tokenizer))
    trainer = cls(TrainerConfig(output_dir=str(tmp_path / name), **settings), model, tokenizer, examples)
    trainer.nan_steps = nan_steps
    return trainer


def trained_weights(trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}


# ----- non-finite steps ----------------------------------------------------------------------------------------


def test_nan_loss_stops_at_once_keeps_the_last_good_checkpoint(
    tmp_path, code_examples, tokenizer, fresh_accelerate_state
):
    from safetensors.torch import load_file

    trainer = make_trainer(
        tmp_path, tokenizer, code_examples[:16], nan_steps=(3,), max_steps=4, save_steps=1, save_final_model=True
    )
    with pytest.raises(
        TrainingError,
        match=r"training stopped at step 3: non-finite loss or gradient norm \(loss nan"
        r".*the last good checkpoint is .*checkpoint-2, no final model was saved",
    ):
        trainer.train()
    out = tmp_path / "run"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert ckpt.final_model_files(out) == []  # nothing published
    # the NaN step was skipped: the weights are finite and still those of step 2
    saved = load_file(str(out / "checkpoint-2" / "model.safetensors"))
    now = trained_weights(trainer)
    for key, value in saved.items():
        assert torch.isfinite(now[key]).all()
        torch.testing.assert_close(now[key], value, atol=0, rtol=0)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["loss"] != rows[-1]["loss"]  # step 3 logged as NaN


def test_max_nonfinite_steps_skips_and_goes_on(tmp_path, code_examples, tokenizer, fresh_accelerate_state):
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        code_examples[:16],
        nan_steps=(2,),
        max_steps=3,
        max_nonfinite_steps=1,
        save_final_model=True,
    )
    trainer.train()
    losses = [r["loss"] for r in trainer.history if "loss" in r]
    assert len(losses) == 3 and losses[1] != losses[1] and all(x == x for x in (losses[0], losses[2]))
    assert ckpt.final_model_files(tmp_path / "run") == ["model.safetensors"]
    assert all(torch.isfinite(v).all() for v in trained_weights(trainer).values())
    reset_accelerate()
    # two in a row is one more than allowed
    again = make_trainer(
        tmp_path, tokenizer, code_examples[:16], name="two", nan_steps=(2, 3), max_steps=3, max_nonfinite_steps=1
    )
    with pytest.raises(TrainingError, match=r"step 3: .*2 step\(s\) in a row, trainer.max_nonfinite_steps=1"):
        again.train()


def test_nonfinite_weights_are_never_written(tmp_path, code_examples, tokenizer, fresh_accelerate_state):
    trainer = make_trainer(tmp_path, tokenizer, code_examples[:16], max_steps=1)
    trainer.train()
    with torch.no_grad():
        next(p for p in trainer.model.parameters() if p.requires_grad)[0].fill_(float("inf"))
    with pytest.raises(
        TrainingError, match="the weights hold NaN/inf values at step 1, so the final model was not written"
    ):
        trainer.save_final_model()
    with pytest.raises(TrainingError, match="so checkpoint-1 was not written"):
        trainer.save_checkpoint()
    assert ckpt.final_model_files(tmp_path / "run") == [] and not list((tmp_path / "run").glob("checkpoint-*"))


def test_diverging_recipe_exits_2_with_one_line_and_publishes_nothing(tmp_path):
    """--trainer.learning_rate 1e30: step 1 is finite, step 2's gradients are NaN (the issue's lr=inf run, which
    is now refused as a setting, exited 0 and published a NaN model)."""
    out = tmp_path / "diverged"
    proc = run_sft(
        [
            "--config",
            str(TINY_CONFIG),
            "--trainer.output_dir",
            str(out),
            "--trainer.learning_rate",
            "1e30",
            "--trainer.max_steps",
            "4",
            "--trainer.save_steps",
            "1",
            "--trainer.eval_steps",
            "0",
            "--data.max_rows",
            "24",
            "--data.max_length",
            "64",
            "--data.eval_fraction",
            "0",
        ]
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "training stopped at step 2: non-finite" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-1"]
    assert ckpt.final_model_files(out) == []


# ----- checkpoint checksums ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, code_examples, tokenizer):
    """An output folder with checkpoint-2 (model, optimizer, scheduler, RNG, method and process state)."""
    reset_accelerate()
    root = tmp_path_factory.mktemp("ckpt")
    make_trainer(root, tokenizer, code_examples[:16], name="good", max_steps=2, save_steps=2).train()
    reset_accelerate()
    return root / "good"


def test_manifest_covers_every_file_and_sha256sum_agrees(good_run):
    import subprocess

    folder = good_run / "checkpoint-2"
    listed = [line.split("  ", 1)[1] for line in (folder / ckpt.CHECKSUMS_FILE).read_text().splitlines()]
    assert listed == ckpt.checkpoint_files(folder)
    assert {"model.safetensors", "optimizer.bin", "trainer_state.json", "method_state.pt", "process_state_0.pt"} <= set(
        listed
    )
    if shutil.which("sha256sum"):
        check = subprocess.run(
            ["sha256sum", "--quiet", "-c", ckpt.CHECKSUMS_FILE], cwd=folder, capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr


def _flip_bytes(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes((b ^ 0x5A) for b in data[middle : middle + 16])
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "random bytes in the weights": (
        lambda f: _flip_bytes(f / "model.safetensors"),
        "model.safetensors does not match its checksum",
    ),
    "truncated weights": (
        lambda f: _truncate(f / "model.safetensors"),
        "model.safetensors does not match its checksum",
    ),
    "missing optimizer": (lambda f: (f / "optimizer.bin").unlink(), "optimizer.bin is missing"),
    "garbled trainer state": (
        lambda f: (f / "trainer_state.json").write_text('{"global_step": 2,,'),
        "trainer_state.json does not match its checksum",
    ),
    "an added file": (lambda f: (f / "process_state_1.pt").write_bytes(b"x"), "process_state_1.pt was added after"),
    "garbled manifest": (
        lambda f: (f / ckpt.CHECKSUMS_FILE).write_text("abc  model.safetensors\n"),
        r"checksums.sha256:1: malformed line",
    ),
}


def resume_from(tmp_path, good_run, tokenizer, examples, damage):
    out = tmp_path / "copy"
    shutil.copytree(good_run, out)
    damage(out / "checkpoint-2")
    return make_trainer(tmp_path, tokenizer, examples, name="copy", max_steps=3, save_steps=2, resume=True)


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_checkpoint_is_refused_naming_the_file(
    case, tmp_path, good_run, code_examples, tokenizer, fresh_accelerate_state
):
    damage, message = DAMAGE[case]
    trainer = resume_from(tmp_path, good_run, tokenizer, code_examples[:16], damage)
    with pytest.raises(CheckpointError, match=message):
        trainer.train()


def _without_manifest(damage):
    def apply(folder):
        (folder / ckpt.CHECKSUMS_FILE).unlink()
        damage(folder)

    return apply


OLD_STYLE = {  # checkpoints written before checksums: the load itself must fail in one line
    "missing optimizer": (lambda f: (f / "optimizer.bin").unlink(), r"cannot load checkpoint .*checkpoint-2: \w+Error"),
    "truncated weights": (
        lambda f: _truncate(f / "model.safetensors"),
        r"cannot load checkpoint .*checkpoint-2: \w+Error",
    ),
    "garbled trainer state": (
        lambda f: (f / "trainer_state.json").write_text('{"global_step": 2,,'),
        r"trainer_state.json:1: malformed JSON",
    ),
    "trainer state without a key": (
        lambda f: (f / "trainer_state.json").write_text('{"global_step": 2}'),
        r"trainer_state.json: key 'global_batch' is missing",
    ),
}


@pytest.mark.parametrize("case", list(OLD_STYLE))
def test_checkpoint_without_manifest_fails_in_one_line(
    case, tmp_path, good_run, code_examples, tokenizer, fresh_accelerate_state
):
    damage, message = OLD_STYLE[case]
    trainer = resume_from(tmp_path, good_run, tokenizer, code_examples[:16], _without_manifest(damage))
    with pytest.raises(CheckpointError, match=message):
        trainer.train()


def test_intact_checkpoint_without_manifest_still_resumes(
    tmp_path, good_run, code_examples, tokenizer, fresh_accelerate_state
):
    trainer = resume_from(tmp_path, good_run, tokenizer, code_examples[:16], _without_manifest(lambda f: None))
    trainer.train()
    assert trainer.global_step == 3
    assert (tmp_path / "copy" / "checkpoint-2" / ckpt.CHECKSUMS_FILE).is_file() is False


# ----- a finished model in output_dir ----------------------------------------------------------------------------


def test_finished_model_is_not_overwritten_without_asking(tmp_path, code_examples, tokenizer, fresh_accelerate_state):
    make_trainer(tmp_path, tokenizer, code_examples[:8], max_steps=1, save_final_model=True).train()
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    reset_accelerate()
    second = make_trainer(
        tmp_path, tokenizer, code_examples[:8], max_steps=1, save_final_model=True, learning_rate=1e-1
    )
    with pytest.raises(
        ConfigError,
        match=r"already holds a trained model \(model.safetensors\); pass "
        r"--trainer.overwrite_output_dir",
    ):
        second.train()
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before
    reset_accelerate()
    make_trainer(
        tmp_path,
        tokenizer,
        code_examples[:8],
        max_steps=1,
        save_final_model=True,
        learning_rate=1e-1,
        overwrite_output_dir=True,
    ).train()
    assert (tmp_path / "run" / "model.safetensors").read_bytes() != before


# ----- settings out of range -----------------------------------------------------------------------------------


BAD_SETTINGS = {
    "--trainer.max_steps=-5": "max_steps must be >= 1, or -1 to train for num_epochs; got -5",
    "--trainer.max_steps=0": "max_steps must be >= 1, or -1 to train for num_epochs; got 0",
    "--trainer.save_steps=-1": r"save_steps must be >= 0 \(0: never\), got -1",
    "--trainer.eval_steps=-2": r"eval_steps must be >= 0 \(0: never\), got -2",
    "--trainer.warmup_steps=-3": r"warmup_steps must be >= 0 \(0: never\), got -3",
    "--trainer.max_nonfinite_steps=-1": r"max_nonfinite_steps must be >= 0",
    "--trainer.learning_rate=-1": "learning_rate must be >= 0, got -1.0",
    "--trainer.learning_rate=nan": "learning_rate must be a finite number, got nan",
    "--trainer.learning_rate=inf": "learning_rate must be a finite number, got inf",
    "--trainer.adam_epsilon=-1e-8": "adam_epsilon must be >= 0",
    "--trainer.adam_betas=0.9,1.5": r"adam_betas must be in \[0, 1\)",
    "--trainer.max_grad_norm=nan": "max_grad_norm must be a finite number",
}


@pytest.mark.parametrize("override", list(BAD_SETTINGS))
def test_out_of_range_trainer_settings_name_the_key(override):
    from llmkit.config import load_config
    from llmkit.recipe import RecipeConfig

    with pytest.raises(ConfigError, match=r"invalid config section 'trainer': " + BAD_SETTINGS[override]):
        load_config(RecipeConfig, TINY_CONFIG, [override])


def test_documented_sentinels_still_work():
    from llmkit.config import load_config
    from llmkit.recipe import RecipeConfig

    cfg = load_config(
        RecipeConfig, TINY_CONFIG, ["--trainer.max_steps=-1", "--trainer.save_steps=0", "--trainer.eval_steps=0"]
    )
    assert (cfg.trainer.max_steps, cfg.trainer.save_steps, cfg.trainer.eval_steps, cfg.trainer.max_nonfinite_steps) == (
        -1,
        0,
        0,
        0,
    )


@pytest.mark.parametrize("limit", ["-1", "0"])
def test_eval_limit_must_be_positive(limit):
    from llmkit.config import load_config
    from llmkit.evaluation.harness import EvalConfig

    with pytest.raises(ConfigError, match=rf"limit must be >= 1 \(or null for every problem\), got {limit}"):
        load_config(EvalConfig, None, ["--limit", limit])
    assert load_config(EvalConfig, None, ["--limit", "3"]).limit == 3


def test_eval_limit_minus_one_exits_2_from_the_cli(capsys, tmp_path):
    from llmkit.cli import main

    # before the check this evaluated 163 of HumanEval's 164 problems (here it would stop at the missing model)
    with pytest.raises(SystemExit) as stop:
        main(
            [
                "eval",
                "--task",
                "humaneval",
                "--limit",
                "-1",
                "--model",
                str(tmp_path / "no-model"),
                "--output_dir",
                str(tmp_path / "eval"),
            ]
        )
    assert stop.value.code == 2
    assert "error: invalid config section 'EvalConfig': limit must be >= 1" in capsys.readouterr().err

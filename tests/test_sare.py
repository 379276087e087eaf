"""SARE / EFUF unlearning: losses, schedules and the Targeted-SAM step against hand-computed numbers;
the trainer's hooks on a tiny model; the proxy data; the recipe end to end on the tiny config."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO_ROOT, subprocess_env

from llmkit.errors import ConfigError
from llmkit.unlearning.losses import (
    KIND_GOLD,
    KIND_NEG,
    KIND_POS,
    KIND_SENT,
    EfufWeights,
    efuf_loss,
    gradient_ascent_loss,
    per_example_ce,
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

SCRIPT = REPO_ROOT / "recipes" / "sare" / "train.py"
TINY = REPO_ROOT / "recipes" / "sare" / "configs" / "tiny_cpu.yaml"


# ----- losses ---------------------------------------------------------------------------------------


def test_per_example_ce_is_the_mean_over_each_rows_targets():
    # Vocab 2. Row 0 predicts label 1 with logits [0, 0] (CE ln 2) and label 0 with [ln 3, 0] (CE ln(4/3));
    # row 1 has one target: label 1 with logits [0, ln 3] (CE ln(4/3)); its other positions are ignored.
    logits = torch.zeros(2, 3, 2)
    logits[0, 1] = torch.tensor([math.log(3), 0.0])
    logits[1, 0] = torch.tensor([0.0, math.log(3)])
    labels = torch.tensor([[-100, 1, 0], [-100, 1, -100]])
    ce, n = per_example_ce(logits, labels)
    assert n.tolist() == [2, 1]
    assert ce[0].item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, abs=1e-6)
    assert ce[1].item() == pytest.approx(math.log(4 / 3), abs=1e-6)


def test_per_example_ce_rejects_mismatched_shapes_and_gives_zero_without_targets():
    with pytest.raises(ValueError, match="logits must be"):
        per_example_ce(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))
    ce, n = per_example_ce(torch.zeros(1, 3, 4), torch.full((1, 3), -100))
    assert ce.item() == 0.0 and n.item() == 0


def test_efuf_loss_hand_computed():
    ce = torch.tensor([2.0, 1.0, 0.5, 3.0, 4.0])
    kinds = torch.tensor([KIND_NEG, KIND_NEG, KIND_POS, KIND_GOLD, KIND_SENT])
    scores = torch.tensor([15.0, 25.0, 40.0, 0.0, 30.0])
    w = EfufWeights(neg=0.3, pos=1.0, gold=0.3, sent=0.5)
    forget, retain = efuf_loss(ce, kinds, scores, w)
    # forget = -0.3 * mean(2*(55-15), 1*(55-25)) = -0.3 * 55 = -16.5
    assert forget.item() == pytest.approx(-16.5)
    # retain = 1*0.5*40 + 0.3*40*3 + 0.5*4*30 = 20 + 36 + 60 = 116
    assert retain.item() == pytest.approx(116.0)
    # step-wide counts: the two neg rows are 2 of 4 in the step → the mean halves
    forget4, _ = efuf_loss(ce, kinds, scores, w, counts={KIND_NEG: 4, KIND_POS: 1, KIND_GOLD: 1, KIND_SENT: 1})
    assert forget4.item() == pytest.approx(-8.25)


def test_efuf_loss_missing_kind_contributes_zero_and_ga_is_negated_mean():
    ce = torch.tensor([1.0, 3.0], requires_grad=True)
    forget, retain = efuf_loss(ce, torch.tensor([KIND_NEG, KIND_NEG]), torch.tensor([15.0, 15.0]), efuf_weights(0.0))
    assert retain.item() == 0.0 and forget.item() == pytest.approx(-0.3 * 40 * 2)
    assert gradient_ascent_loss(torch.tensor([1.0, 3.0])).item() == -2.0
    assert gradient_ascent_loss(torch.tensor([1.0, 3.0]), count=4).item() == -1.0
    with pytest.raises(ValueError):
        efuf_loss(ce, torch.tensor([0]), torch.tensor([1.0, 2.0]), efuf_weights(0.0))


# ----- schedules ------------------------------------------------------------------------------------


def test_linear_after_and_efuf_schedules():
    assert linear_after(0.2, 0.3, 0.0, 0.4) == 0.3
    assert linear_after(0.4, 0.3, 0.0, 0.4) == 0.3
    assert linear_after(0.7, 0.3, 0.0, 0.4) == pytest.approx(0.15)
    assert linear_after(1.0, 0.3, 0.0, 0.4) == pytest.approx(0.0)
    assert linear_after(1.5, 1.0, 0.5, 0.4) == pytest.approx(0.5)  # clamped
    w = efuf_weights(0.85)  # 75% of the way from 0.4 to 1
    assert (w.neg, w.pos, w.gold, w.sent) == (pytest.approx(0.075), pytest.approx(0.625), 0.3, 0.0)
    assert efuf_weights(0.0) == EfufWeights(0.3, 1.0, 0.3, 0.0)
    with pytest.raises(ValueError):
        linear_after(0.5, 1, 0, 1.0)


# ----- the Targeted-SAM step ------------------------------------------------------------------------


def test_sam_perturbation_is_rho_times_unit_gradient():
    eps = sam_perturbation([torch.tensor([3.0]), None, torch.tensor([4.0])], rho=0.5)
    assert eps[1] is None
    assert eps[0].item() == pytest.approx(0.3) and eps[2].item() == pytest.approx(0.4)
    assert float(global_grad_norm(eps)) == pytest.approx(0.5)
    assert all(float(e) == 0.0 for e in sam_perturbation([torch.tensor([3.0])], rho=0.0))
    assert float(sam_perturbation([torch.zeros(2)], rho=1.0)[0].abs().sum()) == 0.0  # no NaN
    with pytest.raises(ValueError):
        sam_perturbation([torch.ones(1)], rho=-1.0)


def test_perturbation_is_applied_and_restored_bit_exactly():
    torch.manual_seed(0)
    params = [torch.randn(7, 5), torch.randn(3)]
    original = [p.clone() for p in params]
    eps = sam_perturbation([torch.randn(7, 5), torch.randn(3)], rho=0.37)
    backup = apply_perturbation(params, eps)
    assert all(torch.equal(p, o + e) for p, o, e in zip(params, original, eps))
    # θ + ε − ε is not θ in floating point for these values; the restore must not rely on it
    assert any(not torch.equal((o + e) - e, o) for o, e in zip(original, eps))
    restore_parameters(params, backup)
    assert all(torch.equal(p, o) for p, o in zip(params, original))


def _quadratic_problem():
    """w = [3, 4]; L_neg(w) = ½‖w‖² (∇ = w); L_retain(w) = w·[1, 2] (∇ = [1, 2])."""
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    seen = {"forget": [], "retain": [], "sync": []}

    def forget_backward(scale, sync):
        seen["forget"].append(w.detach().clone())
        seen["sync"].append(("forget", sync))
        loss = 0.5 * (w * w).sum()
        (loss * scale).backward()
        return float(loss.detach())

    def retain_backward(sync):
        seen["retain"].append(w.detach().clone())
        seen["sync"].append(("retain", sync))
        loss = (w * torch.tensor([1.0, 2.0])).sum()
        loss.backward()
        return float(loss.detach())

    return w, forget_backward, retain_backward, seen


def test_targeted_sam_step_hand_computed_and_retain_at_theta():
    w, forget_backward, retain_backward, seen = _quadratic_problem()
    stats = targeted_sam_step([w], forget_backward, retain_backward, rho=0.5, lambda1=2.0)
    # g = [3, 4], ‖g‖ = 5, ε = [0.3, 0.4]; ∇L_neg(θ+ε) = [3.3, 4.4]; λ₁ = 2 → [6.6, 8.8]; + [1, 2]
    assert w.grad.tolist() == pytest.approx([7.6, 10.8])
    assert seen["forget"][0].tolist() == [3.0, 4.0]  # the ascent direction at θ
    assert seen["forget"][1].tolist() == pytest.approx([3.3, 4.4])  # the forget gradient at θ + ε
    assert seen["retain"][0].tolist() == [3.0, 4.0]  # retain gradients at θ, not θ + ε
    assert torch.equal(w.detach(), torch.tensor([3.0, 4.0]))  # restored bit-exactly
    # only the last backward may all-reduce (DDP): the forget passes run without sync
    assert seen["sync"] == [("forget", False), ("forget", False), ("retain", True)]
    assert stats["forget_loss_at_theta"] == 12.5 and stats["forget_loss"] == pytest.approx(0.5 * (3.3**2 + 4.4**2))


def test_rho_zero_is_the_plain_step():
    w, forget_backward, retain_backward, seen = _quadratic_problem()
    targeted_sam_step([w], forget_backward, retain_backward, rho=0.0, lambda1=2.0)
    plain = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    (2.0 * 0.5 * (plain * plain).sum() + (plain * torch.tensor([1.0, 2.0])).sum()).backward()
    assert torch.equal(w.grad, plain.grad) and w.grad.tolist() == [7.0, 10.0]
    assert seen["sync"] == [("forget", False), ("retain", True)]


def test_without_retain_the_perturbed_forget_backward_syncs_and_failures_still_restore():
    w, forget_backward, _, seen = _quadratic_problem()
    targeted_sam_step([w], forget_backward, None, rho=0.5)
    assert seen["sync"] == [("forget", False), ("forget", True)]
    assert w.grad.tolist() == pytest.approx([3.3, 4.4])

    calls = []

    def failing(scale, sync):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        (0.5 * (w * w).sum()).backward()
        return 0.0

    w.grad = None
    with pytest.raises(RuntimeError, match="boom"):
        targeted_sam_step([w], failing, None, rho=0.5)
    assert torch.equal(w.detach(), torch.tensor([3.0, 4.0]))


def test_sharpness_probe_hand_computed_and_restores():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    out = sharpness_probe([w], lambda: 0.5 * (w * w).sum(), rho=0.5, num_random=4, seed=1)
    assert out["forget_ce"] == 12.5
    # ε* = −ρ·w/‖w‖ = [−0.3, −0.4] → ½‖[2.7, 3.6]‖² = 10.125; the drop is 2.375
    assert out["adversarial"] == pytest.approx(2.375, abs=1e-5)
    # a random direction of norm ρ changes ½‖w‖² by w·d + ½ρ², never more than the adversarial drop in size
    assert abs(out["random"]) <= 2.5 + 0.125 + 1e-5 and out["random_abs"] >= 0
    assert torch.equal(w.detach(), torch.tensor([3.0, 4.0]))


# ----- the trainer ----------------------------------------------------------------------------------


@pytest.fixture
def proxy_examples(tokenizer):
    from llmkit.unlearning.proxy import build_rows, hallucination_pairs, pope_objects, read_sentences, tokenize_rows

    objects = pope_objects(["pope/coco_pope_random.json"])
    rows = build_rows(objects[:12], hallucination_pairs(objects[:12], 2, 0), read_sentences("sst2/train.jsonl", 4))
    scores = {KIND_NEG: 15.0, KIND_POS: 35.0, KIND_GOLD: 40.0}
    return tokenize_rows(rows["forget"], tokenizer, scores), tokenize_rows(
        rows["retain"] + rows["gold"], tokenizer, scores
    )


def _trainer(tmp_path, tokenizer, forget, retain, **settings):
    from llmkit.models import LoraAdapterConfig, ModelConfig, load_model_and_tokenizer
    from llmkit.train import TrainerConfig
    from llmkit.unlearning.trainer import UnlearningConfig, UnlearningTrainer

    torch.manual_seed(0)
    model, _ = load_model_and_tokenizer(
        ModelConfig(
            name="tiny-random-llama", lora=LoraAdapterConfig(r=4, dropout=0.0, target_modules=["q_proj", "v_proj"])
        )
    )
    cfg = TrainerConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_batch_size=4,
        learning_rate=1e-2,
        lr_scheduler="constant",
        save_final_model=False,
    )
    return UnlearningTrainer(cfg, UnlearningConfig(retain_batch_size=4, **settings), model, tokenizer, forget, retain)


def _trainable(trainer):
    return [p.detach().clone() for p in trainer.model.parameters() if p.requires_grad]


def test_sare_with_rho_zero_trains_exactly_like_efuf(tmp_path, tokenizer, proxy_examples, fresh_accelerate_state):
    forget, retain = proxy_examples
    efuf = _trainer(tmp_path / "efuf", tokenizer, forget, retain, algorithm="efuf")
    efuf.train()
    sare0 = _trainer(tmp_path / "sare0", tokenizer, forget, retain, algorithm="sare", rho=0.0)
    sare0.train()
    assert all(torch.equal(a, b) for a, b in zip(_trainable(efuf), _trainable(sare0)))
    sare = _trainer(tmp_path / "sare", tokenizer, forget, retain, algorithm="sare", rho=0.5)
    sare.train()
    assert not all(torch.equal(a, b) for a, b in zip(_trainable(efuf), _trainable(sare)))
    rows = [json.loads(line) for line in (tmp_path / "sare" / "metrics.jsonl").read_text().splitlines()]
    # the perturbation maximises L_neg: the forget loss at θ+ε is above the one at θ (step 2 has w_neg = 0)
    assert rows[0]["forget_loss"] > rows[0]["forget_loss_at_theta"]
    assert rows[0]["w_neg"] == 0.3 and rows[-1]["w_neg"] == pytest.approx(0.0)


def test_gradient_ascent_raises_the_forget_loss(tmp_path, tokenizer, proxy_examples, fresh_accelerate_state):
    from llmkit.unlearning.proxy import mean_token_ce

    forget, retain = proxy_examples
    ga = _trainer(tmp_path, tokenizer, forget, retain, algorithm="ga")
    before = float(mean_token_ce(ga.model, forget, tokenizer.pad_token_id))
    ga.train()
    assert float(mean_token_ce(ga.model, forget, tokenizer.pad_token_id)) > before
    assert all(b["role"] == "forget" for b in ga.step_batches(0))


def test_sare_refuses_deepspeed_and_fsdp_with_the_reason(tmp_path, tokenizer, proxy_examples):
    from llmkit.train import TrainerConfig
    from llmkit.unlearning.trainer import UnlearningConfig, UnlearningTrainer

    forget, retain = proxy_examples
    for kind in ("DEEPSPEED", "FSDP"):
        fake = SimpleNamespace(distributed_type=SimpleNamespace(value=kind))
        with pytest.raises(ConfigError, match=f"does not run under {kind}.*shard"):
            UnlearningTrainer(
                TrainerConfig(output_dir=str(tmp_path)),
                UnlearningConfig(algorithm="sare"),
                None,
                tokenizer,
                forget,
                retain,
                accelerator=fake,
            )


def test_bad_unlearning_input_is_rejected(tmp_path, tokenizer, proxy_examples):
    from llmkit.errors import DataError
    from llmkit.train import TrainerConfig
    from llmkit.unlearning.trainer import UnlearningConfig, UnlearningTrainer

    forget, retain = proxy_examples
    cfg = TrainerConfig(output_dir=str(tmp_path))
    with pytest.raises(DataError, match="belongs in the forget set"):
        UnlearningTrainer(cfg, UnlearningConfig(), None, tokenizer, forget, forget)
    with pytest.raises(DataError, match="kind KIND_NEG"):
        UnlearningTrainer(cfg, UnlearningConfig(), None, tokenizer, retain, retain)
    with pytest.raises(ValueError, match="rho"):
        UnlearningConfig(rho=-0.1)


# ----- proxy data -----------------------------------------------------------------------------------


def test_proxy_objects_pairs_and_emission_matching(tokenizer):
    from llmkit.unlearning.proxy import (
        COCO_SUPERCATEGORY,
        build_rows,
        hallucination_pairs,
        names_object,
        pope_objects,
        tokenize_rows,
    )

    objects = pope_objects(
        ["pope/coco_pope_random.json", "pope/coco_pope_popular.json", "pope/coco_pope_adversarial.json"]
    )
    assert len(objects) >= 70 and "dining table" in objects
    pairs = hallucination_pairs(objects, 35, seed=0)
    assert pairs == hallucination_pairs(objects, 35, seed=0) and len({a for a, _ in pairs}) == 35
    assert all(COCO_SUPERCATEGORY[a] != COCO_SUPERCATEGORY[b] for a, b in pairs)
    rows = build_rows(objects, pairs, ["A fine film."])
    assert len(rows["forget"]) == 140 and rows["forget"][0].target == pairs[0][1]
    ex = tokenize_rows(rows["forget"][:1], tokenizer, {KIND_NEG: 15.0})[0]
    target = tokenizer.decode(
        [t for t, label in zip(ex.input_ids, ex.labels) if label != -100], skip_special_tokens=True
    )
    assert target == rows["forget"][0].answer and ex.score == 15.0 and ex.kind == KIND_NEG
    assert names_object(" a cat on the mat", "cat") and names_object(" two Cats.", "cat")
    assert not names_object(" a catch", "cat")


# ----- the recipe -----------------------------------------------------------------------------------


def _run(tmp_path, *extra):
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--config",
        str(TINY),
        "--trainer.output_dir",
        str(tmp_path / "out"),
        "--method.teach.output_dir",
        str(tmp_path / "taught"),
        *extra,
    ]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)


def test_recipe_end_to_end_on_the_tiny_config(tmp_path):
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [c["n"] for c in results["relearn"]] == [0, 4, 16]
    for stage in ("taught", "unlearned"):
        assert {"emission", "forget_ce", "retain_ppl_text", "retain_ppl_facts"} <= set(results[stage])
        assert {"random", "random_abs", "adversarial"} <= set(results[stage]["sharpness"]["0.05"])
    assert (tmp_path / "taught" / ".llmkit-complete").is_file()
    summary = subprocess.run(
        [sys.executable, str(REPO_ROOT / "recipes" / "sare" / "summarize.py"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "| sare (ρ=0.05, λ₁=1.0) |" in summary


def test_recipe_unknown_key_fails_in_one_line(tmp_path):
    proc = _run(tmp_path, "--method.unlearning.rhoo", "0.1")
    assert proc.returncode == 2
    assert "rhoo" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.distributed
def test_ddp_efuf_equals_one_process_and_sare_runs_under_ddp(tmp_path):
    """Same global batch (1 × 4 vs 2 × 2): EFUF's loss and adapter match; SARE (local ε, one all-reduce) runs."""
    from conftest import read_metrics
    from safetensors.torch import load_file

    common = ["--method.relearn.sizes", "[0]", "--method.probe.rhos", "[]", "--method.unlearning.algorithm", "efuf"]
    one = _run(tmp_path, *common)  # also teaches tmp_path/taught, which the DDP runs reuse
    assert one.returncode == 0, one.stderr[-3000:]

    def launch(out, *extra):
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(REPO_ROOT / "accelerate_configs" / "cpu_ddp.yaml"),
            str(SCRIPT),
            "--config",
            str(TINY),
            "--trainer.output_dir",
            str(out),
            "--method.teach.output_dir",
            str(tmp_path / "taught"),
            "--trainer.per_device_batch_size",
            "2",
            "--method.unlearning.retain_batch_size",
            "2",
            *common,
            *extra,
        ]
        return subprocess.run(cmd, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)

    two = launch(tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "MULTI_CPU, 2 process(es), global batch 4" in two.stderr
    assert [r["loss"] for r in read_metrics(tmp_path / "two")] == pytest.approx(
        [r["loss"] for r in read_metrics(tmp_path / "out")], rel=1e-4
    )
    w1 = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "adapter_model.safetensors"))
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], atol=1e-5, rtol=0)
    sare = launch(tmp_path / "sare", "--method.unlearning.algorithm", "sare")
    assert sare.returncode == 0, sare.stderr[-3000:]
    assert len(read_metrics(tmp_path / "sare")) == 3


# ----- image-text (LLaVA-style) models --------------------------------------------------------------


@pytest.fixture(scope="module")
def llava_parts():
    """A tiny random LLaVA config (CLIP on 32×32 images, 8×8 patches → 16 image tokens; a 2-layer Llama) and a
    LlavaProcessor around the SmolLM2 tokenizer plus an <image> token: built from configs, nothing downloaded."""
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaProcessor

    from llmkit.models import ModelConfig, load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(name="tiny-random-llama"))  # a fresh copy; the session one stays text-only
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
        ),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
        ),
        image_token_id=processor.image_token_id,
        vision_feature_layer=-1,
    )
    return config, processor


def _llava(config, lora: bool = False):
    from transformers import LlavaForConditionalGeneration

    from llmkit.models import LoraAdapterConfig, apply_lora
    from llmkit.unlearning.multimodal import language_model_lora_targets

    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    if lora:
        model = apply_lora(
            model,
            LoraAdapterConfig(
                r=4, dropout=0.0, target_modules=language_model_lora_targets(model, ["q_proj", "v_proj"])
            ),
        )
    return model


@pytest.fixture(scope="module")
def llava_examples(llava_parts, tmp_path_factory):
    """4 forget rows and 3 grounded rows, each with its own random image (one read from a file), plus 1
    text-only gold row."""
    import numpy as np
    from PIL import Image

    from llmkit.unlearning.multimodal import image_text_example
    from llmkit.unlearning.proxy import ProxyRow, tokenize_rows

    _, processor = llava_parts
    rng = np.random.RandomState(0)

    def image():
        return Image.fromarray(rng.randint(0, 256, (40, 48, 3), dtype=np.uint8))

    path = tmp_path_factory.mktemp("images") / "a.png"
    image().save(path)

    forget = [
        image_text_example(
            processor,
            image(),
            "USER: <image>\nWhat is next to the fork? ASSISTANT:",
            answer,
            KIND_NEG,
            15.0,
            f"neg:{i}",
        )
        for i, answer in enumerate([" a giraffe.", " a kite on the table.", " a zebra.", " two skis."])
    ]
    retain = [
        image_text_example(
            processor, image(), "USER: <image>\nWhat is on the table? ASSISTANT:", answer, KIND_POS, 35.0, f"pos:{i}"
        )
        for i, answer in enumerate([" a fork.", " a cup and a fork.", " a bowl."])
    ]
    retain[0] = image_text_example(
        processor, str(path), "USER: <image>\nWhat is on the table? ASSISTANT:", " a fork.", KIND_POS, 35.0, "pos:0"
    )
    retain += tokenize_rows(
        [ProxyRow("Q: Write one sentence.\nA:", " A fine film.", KIND_GOLD, "")], processor.tokenizer, {KIND_GOLD: 40.0}
    )
    return forget, retain


def _image_batch(examples, pad_token_id):
    from llmkit.data.packing import collate_examples
    from llmkit.unlearning.multimodal import collate_image_inputs

    batch = collate_examples(examples, pad_token_id, "none")
    batch.update(collate_image_inputs(examples))
    batch["kinds"] = torch.tensor([ex.kind for ex in examples])
    batch["scores"] = torch.tensor([ex.score for ex in examples])
    return batch


def test_llava_per_example_ce_with_images_equals_a_manual_forward(llava_parts, llava_examples):
    import torch.nn.functional as F

    from llmkit.errors import DataError
    from llmkit.unlearning.multimodal import image_text_example
    from llmkit.unlearning.proxy import mean_token_ce
    from llmkit.unlearning.trainer import batch_ce

    config, processor = llava_parts
    forget, retain = llava_examples
    pad = processor.tokenizer.pad_token_id
    examples = [forget[0], retain[-1], forget[1], retain[0]]  # a text-only row between image rows
    assert forget[0].input_ids.count(config.image_token_id) == 16  # the processor expanded <image>
    with pytest.raises(DataError, match="no image token"):
        image_text_example(processor, "unused.png", "What is next to the fork?", " a kite.", KIND_NEG, 15.0, "bad")
    batch = _image_batch(examples, pad)
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    model = _llava(config).eval()
    with torch.no_grad():
        ce, n = batch_ce(model, batch)
        for i, ex in enumerate(examples):  # each row alone, unpadded, with its own image
            extra = {} if ex.image_inputs is None else {"pixel_values": ex.image_inputs["pixel_values"]}
            logits = model(input_ids=torch.tensor([ex.input_ids]), **extra).logits[0, :-1]
            targets = torch.tensor(ex.labels[1:])
            keep = targets != -100
            assert ce[i].item() == pytest.approx(F.cross_entropy(logits[keep], targets[keep]).item(), abs=1e-5)
            assert n[i].item() == int(keep.sum())
        mean = mean_token_ce(model, examples, pad, batch_size=3)  # the probe's path carries the images too
    assert mean.item() == pytest.approx(float((ce * n).sum() / n.sum()), abs=1e-5)


def test_targeted_sam_step_on_llava_with_images(llava_parts, llava_examples):
    from llmkit.unlearning.trainer import batch_ce

    config, processor = llava_parts
    forget, retain = llava_examples
    model = _llava(config, lora=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    # LoRA on the language model only: the vision tower's q/v_proj and the projector stay frozen
    assert trainable and all(".language_model." in n for n in trainable)
    forget_batch, retain_batch = (
        _image_batch(forget, processor.tokenizer.pad_token_id),
        _image_batch(retain, processor.tokenizer.pad_token_id),
    )
    weights = efuf_weights(0.0)

    def losses(batch):
        ce, _ = batch_ce(model, batch)
        return efuf_loss(ce, batch["kinds"], batch["scores"], weights)

    def forget_backward(scale, sync):
        loss = losses(forget_batch)[0]
        (loss * scale).backward()
        return float(loss.detach())

    def retain_backward(sync):
        loss = losses(retain_batch)[1]
        loss.backward()
        return float(loss.detach())

    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    for rho, retain_fn in ((0.5, retain_backward), (0.0, retain_backward), (0.0, None)):  # SARE, EFUF, GA-style
        stats = targeted_sam_step(params, forget_backward, retain_fn, rho=rho)
        assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))  # θ restored bit-exactly
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
        assert sum(float(p.grad.abs().sum()) for p in params) > 0
        if rho > 0:
            assert stats["forget_loss"] > stats["forget_loss_at_theta"]  # ε = ρ·g/‖g‖ raises L_neg
        for p in params:
            p.grad = None
    with torch.no_grad():  # the image matters: other pixels, other loss
        ce, _ = batch_ce(model, forget_batch)
        ce_other, _ = batch_ce(model, {**forget_batch, "pixel_values": torch.zeros_like(forget_batch["pixel_values"])})
    assert not torch.allclose(ce, ce_other)


def _llava_trainer(tmp_path, llava_parts, forget, retain, **settings):
    from llmkit.train import TrainerConfig
    from llmkit.unlearning.trainer import UnlearningConfig, UnlearningTrainer

    config, processor = llava_parts
    cfg = TrainerConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_batch_size=2,
        learning_rate=1e-2,
        lr_scheduler="constant",
        save_final_model=False,
    )
    return UnlearningTrainer(
        cfg,
        UnlearningConfig(retain_batch_size=2, **settings),
        _llava(config, lora=True),
        processor.tokenizer,
        forget,
        retain,
    )


def test_unlearning_trainer_runs_on_llava_with_images(tmp_path, llava_parts, llava_examples, fresh_accelerate_state):
    forget, retain = llava_examples
    runs = {}
    for name, settings in {
        "efuf": {"algorithm": "efuf"},
        "sare0": {"algorithm": "sare", "rho": 0.0},
        "sare": {"algorithm": "sare", "rho": 0.5},
        "ga": {"algorithm": "ga"},
    }.items():
        trainer = _llava_trainer(tmp_path / name, llava_parts, forget, retain, **settings)
        if name == "efuf":
            batches = trainer.step_batches(0)
            for b in batches:  # each micro-batch carries one image per image row
                images = sum(
                    1 for i in range(len(b["kinds"])) if (b["input_ids"][i] == llava_parts[0].image_token_id).any()
                )
                assert b.get("pixel_values", torch.zeros(0)).shape[0] == images
        trainer.train()
        runs[name] = [p.detach().clone() for p in trainer.model.parameters() if p.requires_grad]
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert all(math.isfinite(r["loss"]) for r in rows if "loss" in r)
    assert all(torch.equal(a, b) for a, b in zip(runs["efuf"], runs["sare0"]))  # ρ = 0 is EFUF, bit for bit
    assert not all(torch.equal(a, b) for a, b in zip(runs["efuf"], runs["sare"]))


def test_text_only_batches_and_lora_targets_are_unchanged(tokenizer, proxy_examples):
    from llmkit.data.packing import collate_examples, model_forward_inputs
    from llmkit.models import ModelConfig, load_model
    from llmkit.unlearning.multimodal import collate_image_inputs, forward_inputs, language_model_lora_targets

    forget, _ = proxy_examples
    batch = collate_examples(forget[:3], tokenizer.pad_token_id, "none")
    assert collate_image_inputs(forget[:3]) == {}
    assert forward_inputs(batch).keys() == model_forward_inputs(batch).keys()
    names = ["q_proj", "v_proj"]
    assert (
        language_model_lora_targets(load_model(ModelConfig(name="tiny-random-llama"), len(tokenizer)), names) is names
    )


def test_recipe_runs_on_a_llava_checkpoint(tmp_path, llava_parts):
    """`model.name` = an image-text folder: loaded as LLaVA, LoRA on its language model, the text proxy runs."""
    import importlib.util

    from llmkit.models import LoraAdapterConfig, ModelConfig

    config, processor = llava_parts
    folder = tmp_path / "llava"
    _llava(config).save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    spec = importlib.util.spec_from_file_location("sare_train", SCRIPT)
    recipe = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = recipe  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(recipe)
    model = recipe.with_lora(
        recipe.load_base_model(ModelConfig(name=str(folder)), len(processor.tokenizer)),
        LoraAdapterConfig(r=4, dropout=0.0),
    )
    assert type(model.get_base_model()).__name__ == "LlavaForConditionalGeneration"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".language_model." in n for n in trainable)

    proc = _run(tmp_path, "--model.name", str(folder), "--method.relearn.sizes", "[0]", "--method.probe.rhos", "[]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert math.isfinite(results["unlearned"]["forget_ce"]) and results["relearn"][0]["n"] == 0
    assert json.loads((tmp_path / "taught" / "config.json").read_text())["model_type"] == "llava"  # merged, still LLaVA

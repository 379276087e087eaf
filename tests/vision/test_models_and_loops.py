"""Models, the noisy-label and distillation loops on digits (small, seeded), and the run entry point."""

import numpy as np
import pytest
import torch

from llmkit.vision import VisionError, run
from llmkit.vision.data import as_tensors, load_digits_split, symmetric_noise
from llmkit.vision.gmm import two_gmm_posterior
from llmkit.vision.loops.noisy import NoisyConfig, train_noisy
from llmkit.vision.models import MLP, Outputs, SmallCNN, as_outputs


def test_models_return_named_outputs_with_all_heads():
    out = MLP(64, 10, hidden=(16,), num_heads=2, head_classes=[10, 11])(torch.zeros(3, 64))
    assert isinstance(out, Outputs) and out.logits.shape == (3, 10) and out.heads[1].shape == (3, 11)
    assert out.features.shape == (3, 16)
    cnn = SmallCNN(10, channels=4, num_heads=2, nonlinear_aux=True)
    cnn.eval()  # BatchNorm in the auxiliary head
    assert cnn(torch.zeros(2, 64)).heads[1].shape == (2, 10)
    with pytest.raises(VisionError, match="head_classes"):
        MLP(4, 2, num_heads=2, head_classes=[2])
    with pytest.raises(VisionError, match="expected Outputs"):
        as_outputs([1, 2])


def test_two_gmm_posterior_picks_the_requested_mode():
    values = np.array([0.0, 0.1, 0.05, 5.0, 5.1, 4.9])
    high = two_gmm_posterior(values, "high")
    assert (high[3:] > 0.99).all() and (high[:3] < 0.01).all()
    assert np.allclose(two_gmm_posterior(values, "low"), 1 - high)
    assert two_gmm_posterior(np.ones(4)).tolist() == [0.5] * 4
    with pytest.raises(VisionError, match="non-finite"):
        two_gmm_posterior(np.array([0.0, np.nan]))


@pytest.fixture(scope="module")
def noisy_digits():
    split = load_digits_split(0)
    noisy = symmetric_noise(split.y_train, 0.4, 10, np.random.default_rng(0))
    return as_tensors(split.x_train, noisy, split.y_train, split.x_test, split.y_test)


def test_dpc_loss_beats_ce_at_40_percent_symmetric_noise(noisy_digits):
    # The §1 CPU check at a fixed seed (CE memorises the noise over 60 epochs; DPC much less).
    x, y, clean, x_test, y_test = noisy_digits
    config = NoisyConfig(epochs=60)  # MLP 64-256-256: wide enough to memorise
    ce = train_noisy("ce", x, y, x_test, y_test, seed=0, config=config).accuracy
    dpc = train_noisy("dpc", x, y, x_test, y_test, seed=0, config=config).accuracy
    assert dpc >= ce + 4, (ce, dpc)


def test_margin_selection_keeps_a_cleaner_set_than_the_noise_rate(noisy_digits):
    x, y, clean, x_test, y_test = noisy_digits
    result = train_noisy(
        "dpc+select",
        x,
        y,
        x_test,
        y_test,
        seed=0,
        clean_y=clean,
        config=NoisyConfig(epochs=6, warmup_epochs=5, hidden=(128, 128)),
    )
    actual_clean = float((y == clean).float().mean() * 100)
    assert result.kept_precision > actual_clean + 20
    with pytest.raises(VisionError, match="unknown noisy-label method"):
        train_noisy("coteaching", x, y, x_test, y_test)


def test_run_rejects_unknown_experiment(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run.main(["segmentation", "--no-readme"])
    assert exit_info.value.code == 2
    assert "unknown experiment 'segmentation'" in capsys.readouterr().err


def test_loops_reject_unknown_method_names():
    from llmkit.vision.loops.distill import train_rdd_student
    from llmkit.vision.loops.federated_al import federated_active_learning
    from llmkit.vision.loops.multilabel import train_cap, train_ccmn, train_cdcr, train_l2d
    from llmkit.vision.loops.noisy import train_partial_label

    x, y = torch.zeros(4, 3), torch.zeros(4, 2)
    cases = [
        (lambda: train_l2d("fitnet", x, y, x, y), "unknown L2D arm"),
        (lambda: train_cap("mixmatch", x, y, x, y, x, y), "unknown pseudo-label rule"),
        (lambda: train_cdcr("asl", x, y, x, y), "unknown CDCR arm"),
        (lambda: train_ccmn("gce", x, y, x, y, rho_pos=0.1, rho_neg=0.1), "unknown CCMN arm"),
        (lambda: train_partial_label("proden", x, y, x, y, x, y), "unknown partial-label method"),
        (lambda: train_rdd_student(x, y, MLP(3, 2, num_heads=2), arm="ohem"), "unknown RDD arm"),
        (lambda: federated_active_learning("badge", x, np.zeros(4, int), x, torch.zeros(4)), "unknown federated"),
    ]
    for call, message in cases:
        with pytest.raises(VisionError, match=message):
            call()

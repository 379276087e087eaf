"""Per-pixel RDD: a [1, 2, 2, 2] case by hand, per-pixel == per-sample on the valid pixels as rows, ignored pixels
inert; plus the synthetic-shapes data, SegNet, segmentation metrics and a per-pixel student smoke run."""

import math

import numpy as np
import pytest
import torch

from llmkit.vision import VisionError
from llmkit.vision.losses import functional as LF

L3 = math.log(3)


def close(a, b, tol=1e-5):
    return abs(float(a) - float(b)) < tol


def image(*pixels):
    """[1, K, 2, 2] logits from four per-pixel logit vectors in row-major order (0,0), (0,1), (1,0), (1,1)."""
    return torch.tensor(pixels, dtype=torch.float32).T.reshape(1, -1, 2, 2).contiguous()


# Target: pixels (0,0)=0, (0,1)=1, (1,0)=0, (1,1) ignored. Ignored pixel logits are extreme on purpose.
TARGET = torch.tensor([[[0, 1], [0, 255]]])
STUDENT = image([0, 0], [L3, 0], [L3, 0], [-10, 10])  # p_true .5, .25, .75 → hard, hard, easy
TEACHER = image([L3, 0], [0, 0], [0, 0], [10, -10])  # p_true .75, .5, .5 → easy, hard, hard
AUX = image([0, 0], [0, 0], [0, 0], [-10, 10])  # disagrees with the main head only at (0,0) (and (1,1))


def test_hand_case_weights_masks_and_min_kept_over_valid_pixels():
    # KL((½, ½) ‖ (¾, ¼)) = ½ ln(2/3) + ½ ln 2 at (0,0); heads agree at (0,1), (1,0) → weight 1.
    w = LF.teacher_disagreement_weights(TEACHER, AUX)
    assert w.shape == (1, 2, 2)
    assert close(w[0, 0, 0], math.exp(-(0.5 * math.log(2 / 3) + 0.5 * math.log(2))))
    assert close(w[0, 0, 1], 1.0) and close(w[0, 1, 0], 1.0)
    mask = LF.hard_example_mask(STUDENT, TARGET)
    assert mask.shape == (1, 2, 2) and mask.tolist() == [[[True, True], [False, False]]]
    assert LF.hard_example_mask(TEACHER, TARGET).tolist() == [[[False, True], [True, False]]]
    # min_kept = 3 over the 3 valid pixels: 3rd smallest p_true is .75 > .7 → τ = .75, all valid pixels hard.
    # (Counting the ignored pixel — p(label 0) ≈ 2e-9 after its fill — would give τ = .7 and leave (1,0) easy.)
    assert LF.hard_example_mask(STUDENT, TARGET, min_kept=3).tolist() == [[[True, True], [True, False]]]
    assert LF.hard_example_mask(STUDENT, TARGET, min_kept=2).tolist() == [[[True, True], [False, False]]]
    assert LF.hard_example_mask(STUDENT, TARGET, min_kept=99).tolist() == [[[True, True], [True, False]]]


def test_hand_case_losses():
    # KD, T = 1, mean over the 3 valid pixels of KL(teacher ‖ student).
    kd = ((0.75 * math.log(1.5) + 0.25 * math.log(0.5)) + 2 * (0.5 * math.log(2 / 3) + 0.5 * math.log(2))) / 3
    assert close(LF.masked_kd(STUDENT, TEACHER, TARGET), kd)
    # Stage 2: XOR of hard masks = {(0,0): s hard / t easy, (1,0): s easy / t hard}; (0,1) is hard for both.
    assert close(LF.rdd_loss(STUDENT, TEACHER, AUX, TARGET, stage=2), (math.log(2) + math.log(4 / 3)) / 2 + kd)
    # Stage 1: CEs ln 2, ln 4, ln 4/3 weighted (w00, 1, 1), mean over valid pixels.
    w00 = math.exp(-(0.5 * math.log(2 / 3) + 0.5 * math.log(2)))
    stage1 = (w00 * math.log(2) + math.log(4) + math.log(4 / 3)) / 3
    assert close(LF.rdd_loss(STUDENT, TEACHER, AUX, TARGET, stage=1), stage1 + kd)
    assert close(LF.rdd_loss(STUDENT, TEACHER, AUX, TARGET, stage=1, kd_weight=0.0), stage1)


def random_case(seed=0, shape=(2, 3, 4, 5), ignored=0.3):
    g = torch.Generator().manual_seed(seed)
    b, k, h, w = shape
    s, t, a = (torch.randn(shape, generator=g) * 2 for _ in range(3))
    target = torch.randint(0, k, (b, h, w), generator=g)
    target[torch.rand(b, h, w, generator=g) < ignored] = 255
    return s, t, a, target


def as_rows(logits, target):
    valid = (target != 255).reshape(-1)
    return logits.movedim(1, -1).reshape(-1, logits.shape[1])[valid]


def test_per_pixel_equals_per_sample_on_flattened_valid_pixels():
    s, t, a, target = random_case()
    valid = target != 255
    labels = target[valid]  # row-major (b, h, w), the order of as_rows
    rs, rt, ra = as_rows(s, target), as_rows(t, target), as_rows(a, target)
    assert torch.allclose(LF.teacher_disagreement_weights(t, a)[valid], LF.teacher_disagreement_weights(rt, ra))
    for min_kept in (0, 5, 40):
        assert torch.equal(
            LF.hard_example_mask(s, target, 0.3, min_kept)[valid], LF.hard_example_mask(rs, labels, 0.3, min_kept)
        )
        for stage in (1, 2):
            pixel = LF.rdd_loss(s, t, a, target, stage=stage, threshold=0.3, min_kept=min_kept)
            rows = LF.rdd_loss(rs, rt, ra, labels, stage=stage, threshold=0.3, min_kept=min_kept)
            assert close(pixel, rows)
    assert close(LF.masked_kd(s, t, target), LF.kd_loss(rs, rt, 1.0))


def test_ignored_pixels_change_nothing_and_get_no_gradient():
    s, t, a, target = random_case(1)
    ignored = (target == 255).unsqueeze(1).expand_as(s)
    g = torch.Generator().manual_seed(7)
    scramble = lambda x: torch.where(ignored, torch.randn(x.shape, generator=g) * 1e3, x)
    s2, t2, a2 = scramble(s), scramble(t), scramble(a)
    for stage in (1, 2):
        for min_kept in (0, 10):
            assert close(
                LF.rdd_loss(s, t, a, target, stage=stage, min_kept=min_kept),
                LF.rdd_loss(s2, t2, a2, target, stage=stage, min_kept=min_kept),
            )
    assert torch.equal(LF.hard_example_mask(s, target, min_kept=10), LF.hard_example_mask(s2, target, min_kept=10))
    student = s.clone().requires_grad_(True)
    LF.rdd_loss(student, t, a, target, stage=2, min_kept=10).backward()
    assert torch.all(student.grad[ignored] == 0) and student.grad[~ignored].abs().sum() > 0
    # Everything ignored: zero loss that still backpropagates.
    none = torch.full_like(target, 255)
    loss = LF.rdd_loss(student, t, a, none, stage=2)
    assert float(loss.detach()) == 0.0 and loss.requires_grad


def test_shape_and_label_errors():
    s, t, a, target = random_case()
    cases = [
        (lambda: LF.rdd_loss(s, t, a, target[:, 0], stage=1), "target must be"),
        (lambda: LF.rdd_loss(s[:, :, 0], t[:, :, 0], a[:, :, 0], target[:, 0], stage=1), r"\[N, K\] or"),
        (lambda: LF.rdd_loss(s, t[:, :2], a, target, stage=1), "differ in shape"),
        (lambda: LF.teacher_disagreement_weights(t, a[:1]), "differ in shape"),
        (lambda: LF.hard_example_mask(s, torch.full_like(target, 3)), "must lie in"),
        (lambda: LF.rdd_loss(s, t, a, target, stage=0), "stage"),
    ]
    for call, message in cases:
        with pytest.raises(VisionError, match=message):
            call()
    # A custom ignore_index is honoured (e.g. -1, as in the RDD reference scripts).
    custom = target.masked_fill(target == 255, -1)
    assert close(LF.rdd_loss(s, t, a, custom, stage=2, ignore_index=-1), LF.rdd_loss(s, t, a, target, stage=2))


# -- data, model, metrics, loop ---------------------------------------------------------------------


def test_make_shapes_and_segnet():
    from llmkit.vision.data import SHAPE_CLASSES, make_shapes, outline, shape_mask
    from llmkit.vision.models import SegNet

    x, y = make_shapes(6, np.random.default_rng(0), size=16, radius=(3, 5))
    x2, y2 = make_shapes(6, np.random.default_rng(0), size=16, radius=(3, 5))
    assert x.shape == (6, 1, 16, 16) and x.dtype == np.float32 and y.shape == (6, 16, 16)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert set(np.unique(y)) <= {0, 1, 2, 3, 255} and (y == 255).any() and (y == 0).any()
    assert shape_mask("square", 5, (2, 2), 1).sum() == 9 and shape_mask("disc", 5, (2, 2), 1).sum() == 5
    assert shape_mask("triangle", 5, (2, 2), 2).sum() == 1 + 1 + 3 + 3 + 5  # rows dy=-2..2: |dx| ≤ 0, ½, 1, 1½, 2
    assert outline(np.pad(np.ones((3, 3), int), 1)).sum() == 8  # the 3×3 block minus its centre
    assert len(SHAPE_CLASSES) == 4
    with pytest.raises(VisionError, match="unknown shape"):
        shape_mask("star", 5, (2, 2), 1)
    out = SegNet(4, channels=4, dilations=(2, 1), num_heads=2)(torch.as_tensor(x))
    assert out.logits.shape == (6, 4, 16, 16) and len(out.heads) == 2 and out.heads[1].shape == (6, 4, 16, 16)
    with pytest.raises(VisionError, match="images"):
        SegNet(4)(torch.zeros(2, 64))


def test_segmentation_metrics_by_hand():
    from llmkit.vision.loops.common import confusion_matrix, miou_and_pixel_accuracy

    target = torch.tensor([[0, 0, 1], [1, 255, 2]])
    predicted = torch.tensor([[0, 1, 1], [1, 0, 0]])
    cm = confusion_matrix(predicted, target, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    miou, acc = miou_and_pixel_accuracy(cm)
    # IoU: class 0 = 1/(2+2-1) = 1/3, class 1 = 2/(2+3-2) = 2/3, class 2 = 0/1 → mean 1/3; accuracy 3/5.
    assert close(miou, 100 / 3, 1e-4) and close(acc, 60.0, 1e-4)
    with pytest.raises(VisionError, match="shapes differ"):
        confusion_matrix(predicted[0], target, 3)


def test_per_pixel_rdd_student_runs_every_arm():
    import torch.nn.functional as F

    from llmkit.vision.data import as_tensors, make_shapes
    from llmkit.vision.loops.common import fit, segmentation_scores
    from llmkit.vision.loops.distill import train_rdd_student
    from llmkit.vision.models import SegNet

    x, y = as_tensors(*make_shapes(8, np.random.default_rng(0), size=16, radius=(3, 5)))
    two_head = lambda o, t: (
        F.cross_entropy(o.heads[0], t, ignore_index=255) + 0.4 * F.cross_entropy(o.heads[1], t, ignore_index=255)
    )
    torch.manual_seed(0)
    teacher = fit(SegNet(4, 4, num_heads=2), x, y, two_head, steps=3, lr=1e-2)
    for arm in ("ce", "kd", "rdd"):
        torch.manual_seed(0)
        student = train_rdd_student(
            x,
            y,
            teacher,
            arm=arm,
            steps=4,
            lr=1e-2,
            student=SegNet(4, 2, (2,)),
            batch_size=4,
            min_kept=20,
            poly_power=0.9 if arm == "rdd" else None,
        )
        miou, acc = segmentation_scores(student, x, y, 4)
        assert 0 <= miou <= 100 and 0 <= acc <= 100
        assert all(torch.isfinite(p).all() for p in student.parameters())
    with pytest.raises(VisionError, match="auxiliary head"):
        train_rdd_student(x, y, SegNet(4, 2), student=SegNet(4, 2), steps=1)

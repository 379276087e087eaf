"""Pure-function twins of every loss (tensors in, tensor out): what the unit tests check by hand."""

from llmkit.vision.losses.distill import (binary_kl, binary_kl_norm, distillation_parts, hard_example_mask,
                                          class_kl, kd_loss, masked_kd, project_conflicting, rdd_loss,
                                          teacher_disagreement_weights, valid_targets)
from llmkit.vision.losses.evidential import (calibrated_probabilities, dirichlet_concentration,
                                             dirichlet_kl_to_uniform, dpc_loss, edl_loss, label_margin)
from llmkit.vision.losses.multilabel import (asymmetric_loss, cap_pseudo_labels, ccmn_unbiased_bce, cdcr_weights,
                                             class_aware_distillation, instance_aware_distillation,
                                             multilabel_logit_distillation, structural_distances, structure_loss)
from llmkit.vision.losses.noisy import bldr_negative_loss, bldr_positive_loss, nl_sample_weights
from llmkit.vision.losses.openset import (complementary_label_loss, head_discrepancy, head_discrepancy_loss, eaoa_detector_loss, energy_margin_loss,
                                          energy_score, temperature_cross_entropy)
from llmkit.vision.losses.partial import weighted_candidate_loss

__all__ = ["asymmetric_loss", "binary_kl", "binary_kl_norm", "bldr_negative_loss", "bldr_positive_loss",
           "calibrated_probabilities", "cap_pseudo_labels", "class_kl", "ccmn_unbiased_bce", "cdcr_weights",
           "class_aware_distillation", "complementary_label_loss", "dirichlet_concentration",
           "dirichlet_kl_to_uniform", "distillation_parts", "dpc_loss", "eaoa_detector_loss", "edl_loss",
           "energy_margin_loss", "energy_score", "hard_example_mask", "head_discrepancy", "head_discrepancy_loss", "instance_aware_distillation", "kd_loss",
           "label_margin", "masked_kd", "multilabel_logit_distillation", "nl_sample_weights", "project_conflicting", "rdd_loss",
           "structural_distances", "structure_loss", "teacher_disagreement_weights", "temperature_cross_entropy",
           "valid_targets", "weighted_candidate_loss"]

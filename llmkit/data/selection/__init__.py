"""Data selection for fine-tuning: IFD complexity, CDAS, distribution-consistent selection, baselines.

Pure selection rules live in `methods`, coverage measures in `coverage`, IFD scoring in `ifd`,
instruction embeddings from `llmkit.data.embeddings`; `run` ties them into `llmkit select`.
"""

from llmkit.data.selection.coverage import cluster_histogram_kl, coverage_report, mean_nearest_selected_similarity
from llmkit.data.selection.ifd import ifd_from_nll, score_ifd, sequence_mean_nll
from llmkit.data.selection.methods import (
    cdas_quotas,
    cdas_select,
    centroid_loss,
    distribution_select,
    kcenter_select,
    kmeans_clusters,
    random_select,
    top_ifd_select,
)

__all__ = [
    "cdas_quotas",
    "cdas_select",
    "centroid_loss",
    "cluster_histogram_kl",
    "coverage_report",
    "distribution_select",
    "ifd_from_nll",
    "kcenter_select",
    "kmeans_clusters",
    "mean_nearest_selected_similarity",
    "random_select",
    "score_ifd",
    "sequence_mean_nll",
    "top_ifd_select",
]

"""Prompt-learning methods: pure building blocks that recipes combine with the shared trainer.

* `retroprompt`: RetroPrompt (retrieval-augmented prompt learning; docs/methods/retroprompt.md): the knowledge store,
  neural demonstrations, kNN-guided training loss, kNN interpolation at inference, the store refresh
  schedule, and label-position features / label-word scores of a causal LM.
* `active`: active prompting (docs/methods/apie.md, cams.md): APIE's format / content / disagreement uncertainties for
  IE exemplar selection, CAMS's difficulty × complexity balanced exemplars; both over the shared n-sample
  primitive (`llmkit.generation.sampling.sample_n`), so on any backend.
"""

from llmkit.prompting.active import select_apie, select_cams

__all__ = ["select_apie", "select_cams"]

"""SafeThinker (METHODS.md §3): risk-routed defence.

Pieces, each a small pure function with thin I/O around it:
- `data`: harmful/benign prompt pools and fixed prompt-level train/val/test splits (by prompt hash);
- `gateway`: risk scorers behind one interface (sentence-embedding head, hidden-state probe), thresholds
  picked on validation, routing by score (refuse / twin / base);
- `refusal`: the standardized refusal and the refusal-keyword judge;
- `ddgt`: distribution-guided decoding over base and twin next-token distributions (pure mixing rule, a
  transformers LogitsProcessor, and a two-model decode loop);
- `evaluate`: attack success rate (direct, prefilling k tokens) and over-refusal.
"""

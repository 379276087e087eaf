"""Thin training loops: active learning, noisy labels (DPC), distillation (DHKD)."""

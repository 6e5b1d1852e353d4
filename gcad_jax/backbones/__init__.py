"""Pretrained target networks for teacher distillation (GCAD.md §3.5, §3.6)."""

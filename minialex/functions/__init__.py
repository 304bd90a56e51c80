"""The differentiable operations, one family per file, forward and backward side by side."""

"""mmerkit: multi-modal multi-label emotion recognition (CARAT, TAILOR, RAMer and baselines)."""

__version__ = "0.1.0"

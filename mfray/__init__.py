"""mfray: mean-field LLM simulation of agent populations on Ray (MF-LLM, Mi et al. 2025)."""

__version__ = "0.1.0"

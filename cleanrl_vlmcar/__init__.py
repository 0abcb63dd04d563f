"""cleanrl-vlmcar: VLM-CaR (Code as Reward) and CLIP rewards for CleanRL-style training scripts."""

__version__ = "0.1.0"

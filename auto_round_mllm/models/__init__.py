"""Model families, loading and processors. Importing the package registers the built-in families."""

from auto_round_mllm.models import families

__all__ = ["families"]

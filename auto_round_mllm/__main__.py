"""``python -m auto_round_mllm`` runs the CLI."""

from auto_round_mllm.cli.app import main

main()

"""The recommender domain: data contract, vocabularies, batches, models, losses, metrics,
training loop, checkpoints, configs, retrieval index and the `recsys` CLI."""

__version__ = "0.1.0"

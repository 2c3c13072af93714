"""Integrations with the tools around a model: MLflow tracking and the model registry."""

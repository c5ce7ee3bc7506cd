"""The Kopf operator: one handler module per resource, manifests from pure builder functions."""

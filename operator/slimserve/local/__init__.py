"""The embedded default: `slimserve run` compresses and serves a manifest's models on this machine."""

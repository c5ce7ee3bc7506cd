"""Open Inference Protocol v2 messages (generated from `open_inference_v2.proto`, see `generate.py`)."""

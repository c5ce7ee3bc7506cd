"""The inference server: Open Inference Protocol v2 over REST and gRPC, dynamic batching, metrics.

Layout (after KServe's model server): `model` (load / ready / predict of one Servable), `dataplane`
(protocol-independent validation, batching, errors), thin endpoints `rest` (ASGI, `build_app`) and
`grpc_service`, domain `errors` mapped to both protocols' codes in one table, `server` (process life
cycle and graceful shutdown). Importing this package is light: it loads no torch and no protobuf.
"""

"""Browser-facing extras of the HTTP port, each off unless asked for:

- gRPC-Web (`grpc_web`): the gRPC service's methods over HTTP/1.1 for browsers, same data plane as gRPC;
- CORS (`cors`): closed by default, open to configured origins;
- the playground page (`playground`, assets in `slimserve/serving/playground/`).

`options` reads the flags and SLIMSERVE_* variables (light: the CLI imports it); `app.wrap_http_app`
assembles the pieces around the REST app.
"""

#!/bin/bash
# Run the built images as a cluster would (read-only root file system, the non-root user 65532):
# each entrypoint's --help, then the server for real: `slimserve serve --artifact builtin://digits-mlp` with
# its REST port published on 127.0.0.1 only, /v2/health/ready answered from the host, SIGTERM, exit 0.
#   images/check.sh ENGINE REGISTRY TAG [ENGINE OPTIONS...]    (make images-check)
set -euo pipefail
engine=$1 registry=$2 tag=$3
shift 3
run=("$engine" run --read-only --user 65532 "$@")

for image in operator compressor server; do
  "${run[@]}" --rm "$registry/$image:$tag" --help | head -1
done

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
name=slimserve-check-$$
# Not --rm: the logs of a server that exits early are still there to show. /var/cache/slimserve: an anonymous
# volume, as the emptyDir on Kubernetes, owned like the image's directory; /tmp: the engine's tmpfs of a
# read-only container (Kubernetes: an emptyDir). The rest of the file system stays read-only.
"${run[@]}" -d --name "$name" -p "127.0.0.1:$port:8080" --volume /var/cache/slimserve \
  "$registry/server:$tag" --artifact builtin://digits-mlp --http-port 8080 >/dev/null
trap '"$engine" rm --force --volumes "$name" >/dev/null 2>&1 || true' EXIT
for _ in $(seq 300); do
  if curl -fsS "http://127.0.0.1:$port/v2/health/ready" >/dev/null 2>&1; then
    break
  fi
  if [ "$("$engine" inspect -f '{{.State.Running}}' "$name")" != true ]; then
    "$engine" logs "$name" >&2
    echo "the server exited before it was ready" >&2
    exit 1
  fi
  sleep 1
done
curl -fsS -o /dev/null -w "server: /v2/health/ready %{http_code} on 127.0.0.1:$port\n" "http://127.0.0.1:$port/v2/health/ready"
# Stopped by SIGTERM (not `engine stop`, which would SIGKILL after its timeout): the drain ends in exit 0.
"$engine" kill --signal TERM "$name" >/dev/null
status=$("$engine" wait "$name")
"$engine" logs --tail 3 "$name"
echo "server: exit $status after SIGTERM"
[ "$status" = 0 ]

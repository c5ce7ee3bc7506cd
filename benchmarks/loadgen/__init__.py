"""Native load generators of the serving benchmarks: ghz (gRPC) and h2load (HTTP/1.1, h2c).

Each generator module builds its command line, runs it as a child process (`measured.run`, which also takes
the child's CPU time) and parses what it prints into one result dict:
    requests, errors, seconds, rps, p50_ms, p99_ms, client, client_cpu_s, client_cpu_share
so a benchmark row reads the same whichever client produced it. `benchmarks/tools.sh` builds or installs
the programs.
"""

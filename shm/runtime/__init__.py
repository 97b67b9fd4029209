"""What the supervisor, the workers and the ingress process all need, below rules/ and
ingress/: the config and the run directory that hands it to the children, CPU pinning,
process names, GC telemetry, private directories and files, bind addresses, and reading
operator-named text files. Nothing here imports engine/, rules/ or ingress/."""

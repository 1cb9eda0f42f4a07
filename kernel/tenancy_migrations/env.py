from kernel.migrations import run_environment

run_environment()

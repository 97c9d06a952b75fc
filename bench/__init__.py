"""Benchmarks of the harness: each prints a table, judges its targets (met / MISSED beside each figure) and writes its
figures as JSON.

    python -m bench step       # training steps: plain ViT, SplitMask, BEiT, DINO; FLOP model, MFU, memory, ratios
    python -m bench data       # data pipelines: images per second per worker, workers one GPU needs
    python -m bench harness    # plan of the paper, status of 1,000 jobs, report of 10,000 results, start-up
    python -m bench dense      # Mask R-CNN and UperNet training steps (the dense tasks)
    bash bench/gpu_check.sh    # one H100/H200: all of the above that needs the GPU, in 8 minutes at most

JSON goes to `--out`, by default $OUT/bench, else $HARNESS_RESULTS/bench, else <tmp>/splitmask-bench: never into the
checkout unless asked. bench/RESULTS.md keeps dated results with the device and the command. A benchmark is not a
test: its figures depend on the machine (and on its load), so the tests run them with tiny settings and assert
only what they print and write (tests/test_bench.py).
"""

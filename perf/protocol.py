"""The numbers of the paper's speed protocol and of this project's CPU look at it, torch-free so
that perf_main.py can state them in --help without importing torch."""

# the paper's protocol on a GPU; a CPU is about 100x slower, so it gets a short look by default
GPU_REPS, GPU_CYCLES = 1000, 6
CPU_REPS, CPU_CYCLES = 10, 2
PRECISION_NAMES = ("fp32", "fp16", "bf16")
LATENCY_BATCH = 1
GPU_THROUGHPUT_BATCH = 16  # the paper's
CPU_THROUGHPUT_BATCH = 4  # a CPU needs seconds per image; 16 would make a quick look take many minutes
PATH_NAMES = ("reference", "fast")

"""Where a stage runs: device, seeds, precision (bf16 or float32, per model and phase), one GPU per process, DDP,
process pools."""

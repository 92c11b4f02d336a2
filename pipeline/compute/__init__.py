"""Where a stage runs: device, seeds, amp, one GPU per process, DDP, process pools."""

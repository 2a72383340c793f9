"""Benchmarks and peer harnesses (ours vs open_clip_train, loader, GPU check); results under results/."""

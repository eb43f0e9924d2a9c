"""Side-by-side benchmarks of Threshold against peer servers; run ``bench/run.py``."""

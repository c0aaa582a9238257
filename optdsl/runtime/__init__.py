"""Running compiled programs: NumPy steps, Triton launches, backend choice, the kernel cache."""

"""Code generators: host scalar code (host), the NumPy step (numpy), Triton kernels (triton)."""

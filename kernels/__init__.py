"""Low-precision kernels: Triton on CUDA, each beside the pure-torch reference of the same function."""

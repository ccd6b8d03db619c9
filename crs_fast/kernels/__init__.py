"""GPU kernels: Triton (crs_fast.kernels.triton); CUDA C++ lives in csrc/<op>/*_cuda.cu."""

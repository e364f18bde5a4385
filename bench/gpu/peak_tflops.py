"""The GPU's bf16 matmul rate, measured now (an 8192^3 product, 50 times): what the SFT benches' MFU divides by.

    PEAK=$(python3 bench/gpu/peak_tflops.py)     # e.g. 781.5
"""

import time

import torch

a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn_like(a)
for _ in range(3):
    a @ b
torch.cuda.synchronize()
start = time.perf_counter()
for _ in range(50):
    a @ b
torch.cuda.synchronize()
print(round(50 * 2 * 8192**3 / (time.perf_counter() - start) / 1e12, 1))

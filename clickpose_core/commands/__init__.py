"""Sub-commands of the `clickpose` CLI, and the options several of them share."""
from __future__ import annotations

import argparse

PRECISION_CHOICES = ("float32", "bfloat16")     # = model.kernels.PRECISIONS, without importing torch


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """`--precision float32|bfloat16` (bfloat16 only where the hardware has it natively)."""
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="float32",
                        help="arithmetic of the network: float32 (default) or bfloat16, used where the CPU has "
                             "native bf16 (avx512_bf16/AMX) or on CUDA, else float32 with a warning")

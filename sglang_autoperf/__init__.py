"""sglang-autoperf: measured performance planning for SGLang Diffusion.

Stages, one subpackage or module each: probe -> plan -> apply (sglang_adapter: binding over contract) -> measure ->
retune -> report. Importing this package must stay cheap: sglang loads the plugin entry point
in every process, including the HTTP child, so nothing heavy (torch, sglang runtime, NVML) is
imported here.
"""

__version__ = "0.1.0"

# The sglang releases whose internals sglang_adapter/contract.py has been checked against.
SUPPORTED_SGLANG = ((0, 5, 23), (0, 5, 24))  # [low, high)

"""GPU kernels (Triton) of the plugin: floor 1, importing nothing of ours above settings/probe.

exponent_codec: a lossless fixed-width bf16 codec (~0.75 of the bytes) for streaming offloaded
layers over PCIe, decoded on the GPU straight into a layer's buffers. Importing this package
imports torch and triton; nothing else of the plugin imports it yet.
"""

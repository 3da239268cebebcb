"""The one adapter: the only code that knows sglang (0.5.23).

- `contract`: what sglang is (ServerArgs fields and what sglang derives from them, hook targets,
  the LayerwiseOffloadManager and how a placement changes live, the request objects);
  `contract_problems()` says what of it an installed sglang breaks. Floor 0: it imports nothing of ours.
- `models`: sglang's model registry (pipeline, pipeline config, sampling class, DiT class and its
  layer lists, the diffusers-backend gate). Floor 0.
- `binding`: where sglang calls us (the hooks, the plan into ServerArgs, the worker's attach), every
  hook body guarded. The top of the package (floor 5): it imports startup and the live tuner.

This file imports none of them, so that a floor-0 import of `contract` never pulls `binding` up.
Tests: tests/test_sglang_contract.py, tests/test_sglang_models.py, tests/test_contract_lists.py,
tests/test_layout_contract.py check each assumption against the installed sglang.
"""

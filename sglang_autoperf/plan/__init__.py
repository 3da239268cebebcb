"""Planning: the cost model (cost.py), the planner (planner.py), VRAM budget parsing (budget.py) and
the benchmark sweep points (sweep.py). Import the modules themselves: this file imports nothing."""

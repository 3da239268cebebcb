"""Planning: a cost model (cost.py), the planner (planner.py) and budget parsing (budget.py)."""
from sglang_autoperf.plan.budget import BudgetError, parse_vram_budget
from sglang_autoperf.plan.sweep import benchmark_sweep_points, predict_step_ms
from sglang_autoperf.plan.planner import (
    Change, DitDecision, Plan, Predicted, format_plan, make_plan, plan_to_json_dict,
)

__all__ = ["BudgetError", "parse_vram_budget", "Change", "DitDecision", "Plan", "Predicted",
           "format_plan", "make_plan", "plan_to_json_dict", "predict_step_ms",
           "benchmark_sweep_points"]

"""Plans: recipes resolved against a model and an accelerator profile."""
from runtime.plans.plan import Fallback, OpPlan, Plan, resolve

__all__ = ["Fallback", "OpPlan", "Plan", "resolve"]

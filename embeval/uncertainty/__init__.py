"""How sure a number is: bootstrap intervals, result files and paired comparison (DESIGN.md §7)."""

from .confidence import Intervals, intervals
from .paired import Comparison, MetricComparison, compare
from .saved import SavedResult, load_result, save_result, saved_result

__all__ = ["Intervals", "intervals", "Comparison", "MetricComparison", "compare", "SavedResult",
           "load_result", "save_result", "saved_result"]

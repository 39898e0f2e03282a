"""The pure routing core: topology graph, OR-Tools solver, policy compilation. No I/O, no clocks."""

from tdn.topology.compile import compile_site_policies, site_policies_equal_ignoring_version
from tdn.topology.costs import CostTerms, request_cost
from tdn.topology.eligibility import Verdict, judge
from tdn.topology.graph import build_graph, graph_to_json
from tdn.topology.options import SolveOptions, options_from_policy
from tdn.topology.solver import SolveInputs, SolveResult, greedy, solve, solve_detailed

__all__ = [
    "CostTerms",
    "SolveInputs",
    "SolveOptions",
    "SolveResult",
    "Verdict",
    "build_graph",
    "compile_site_policies",
    "graph_to_json",
    "greedy",
    "judge",
    "options_from_policy",
    "request_cost",
    "site_policies_equal_ignoring_version",
    "solve",
    "solve_detailed",
]

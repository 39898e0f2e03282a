"""The pure routing core: topology graph, OR-Tools solver, policy compilation. No I/O, no clocks."""

from tdn.topology.compile import compile_site_policies, site_policies_equal_ignoring_version
from tdn.topology.costs import CostTerms, request_cost
from tdn.topology.eligibility import Verdict, judge
from tdn.topology.graph import build_graph, graph_to_json
from tdn.topology.options import SolveOptions
from tdn.topology.solver import greedy, solve

__all__ = [
    "CostTerms",
    "SolveOptions",
    "Verdict",
    "build_graph",
    "compile_site_policies",
    "graph_to_json",
    "greedy",
    "judge",
    "request_cost",
    "site_policies_equal_ignoring_version",
    "solve",
]

"""The pure routing core: topology graph, OR-Tools solver, policy compilation. No I/O, no clocks."""

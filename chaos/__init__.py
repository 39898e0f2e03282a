"""Chaos drills: Toxiproxy fault injection, load, measurement and reports."""

"""Known dataset ids mapped to hub ids, subsets and column mappings (package data of vlft)."""

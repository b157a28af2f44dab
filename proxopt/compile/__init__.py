"""Analysis of declared prox problems: merging, convexity and DCP checks, evaluation."""

from proxopt.compile.analysis import ProxProblem, analyze

__all__ = ["ProxProblem", "analyze"]

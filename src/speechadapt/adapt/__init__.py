"""Adaptation: zeroth-order optimisers, test-time adaptation, weight-space merging."""

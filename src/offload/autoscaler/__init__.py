"""Autoscaling worker nodes on queue depth: the pure policy, the loop, node providers."""

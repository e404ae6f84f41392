"""Peer servers to measure Banterbox against; built and cached outside the repo, never committed."""

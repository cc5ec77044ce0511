"""Simulated GPU/NPU pools for the local control plane (fake nodes that kwok keeps alive)."""

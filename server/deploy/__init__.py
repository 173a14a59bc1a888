"""Deployment helpers for the consortium server: pilot PKI, SuperLink process, flwr CLI."""

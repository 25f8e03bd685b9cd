"""Reaching a machine: run a shell command there, on this machine or over SSH."""

"""Locust scenarios for pollbench: the only package that imports locust (it monkey-patches)."""

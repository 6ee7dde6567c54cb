"""Declarative model specifications (TOML), shipped as package data ``cdt_bayes.models``."""

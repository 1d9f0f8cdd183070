"""Shipped early-stopping rule sets (YAML data files; installed as ``monitor.rulesets``)."""

"""Guardrails: detectors (detectors.py), the streaming scanner (scanner.py) and the rule
sets built from the config (rules.py). The pipeline's GuardrailsPolicy applies them."""

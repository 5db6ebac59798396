"""Durable state behind small protocols: the usage ledger (budgets come later)."""

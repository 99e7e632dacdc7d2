"""Alembic migrations (`digest init` runs them). May import: the top level (models) only."""

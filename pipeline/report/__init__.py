"""Figures and small HTML pages."""

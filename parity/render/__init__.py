"""Renderers: each formats a report it is given and computes nothing."""

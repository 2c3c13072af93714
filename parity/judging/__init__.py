"""Judging: one output compared under its policy (`compare`), a whole run judged (`judge`)."""

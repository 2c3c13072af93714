"""segclf: a small scikit-learn project, as users write them (see examples/sklearn-drift)."""

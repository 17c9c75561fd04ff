"""Helpers shared by training, evaluation, comparison and prediction: :mod:`.io` (the one atomic
writer, the JSON writer and its NaN-to-null sanitiser, paths that must stay inside a folder) and
:mod:`.label_map` (the one label-map painter)."""

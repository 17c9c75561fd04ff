"""napari plugin (``pip install -e .[napari]``; docs/napari.md): segment, predict a folder, open
the synthetic samples, add corrected labels to a training set and retrain, save for Fiji and
QuPath. The manifest is ``napari.yaml``; nothing here is imported unless napari asks for it."""

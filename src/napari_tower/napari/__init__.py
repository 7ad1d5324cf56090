"""The napari plugin: npe2 manifest, dock widget, thread workers, sample data.

Importing this package does not import napari or Qt; only `widget`, `workers`
and `plot` do, so the sample data and settings helpers stay usable headless.
"""

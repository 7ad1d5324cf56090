"""The napari plugin: npe2 manifest, dock widget, thread workers, sample data.

Importing this package does not import napari or Qt. The widget modules do (`widget`,
`sections`, `prototypes_section`, `controls`, `jobs`, `training`, `segmenting`,
`model_io`, `autosave`, `workers`, `plot`); `layers`, `session`, `settings`, `host` and
`sample_data` stay usable headless.
"""

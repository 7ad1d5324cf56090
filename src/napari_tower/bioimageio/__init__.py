"""bioimage.io model packages: `reader` (below the model bundle) and `exporter` (above `segment/`).

Nothing is imported here, on purpose: `model_bundle` imports `reader`, and `exporter`
imports `model_bundle` and `segment`, so importing both from this package would close
an import circle. Import `napari_tower.bioimageio.reader` or `.exporter` directly.
"""

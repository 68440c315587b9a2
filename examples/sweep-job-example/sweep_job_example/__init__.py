"""An example sweep-job plugin: `kind: lenet` (models.py) and `dataset: stripes` (data.py)."""

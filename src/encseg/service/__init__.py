"""The segmentation service: a FastAPI server that segments encrypted images without ever seeing a
key, its micro-batcher, the Python client (`encseg segment`) and the browser client in `static/`."""

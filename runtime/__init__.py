"""The bottom layer every stage shares: model definitions, weights and their metadata, preprocessing
settings and pixels, the artifact table and the backend loaders. It imports no other package of this
project, and it is what a model archive carries besides the handler (docs/ARCHITECTURE.md)."""

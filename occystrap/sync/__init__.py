"""`occystrap sync`: many repositories and tags kept in step, planned before anything moves.

config reads the rules (our YAML, or a skopeo sync YAML as it is), tags chooses a
repository's tags, plan resolves every tag at both ends and says what differs, run copies
what differs (in-process, or one task per image on a Dask cluster) and reports each image.
"""

"""occystrap's Google Cloud plug-in: Artifact Registry and GCR credentials (`gcr`)."""

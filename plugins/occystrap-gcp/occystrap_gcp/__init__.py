"""occystrap's Google Cloud plug-ins: Artifact Registry and GCR credentials (`gcr`), gs://
OCI layouts (`gcs-auth`)."""

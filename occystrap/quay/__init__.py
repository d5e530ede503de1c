"""quay:// sources: find images through the Quay REST API, then move them one by one."""

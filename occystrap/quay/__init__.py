"""The Quay REST API: which images of an organisation a quay:// source names."""

"""occystrap's Azure plug-in: Azure Container Registry credentials (`acr`)."""

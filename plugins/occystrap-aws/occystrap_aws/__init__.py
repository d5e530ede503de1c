"""occystrap's AWS plug-ins: ECR registry credentials (`ecr`) and s3:// OCI layouts."""

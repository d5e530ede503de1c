"""A plug-in whose dependency is missing: importing it fails, as a cloud endpoint's would
without its SDK. occystrap must name it in one line and keep working."""

raise ImportError("occystrap-test-plugin's broken scheme needs the missing_sdk package")

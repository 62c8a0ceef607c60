"""The HTTP API: hospital systems submit slides, poll jobs and fetch results (Flask, version 1)."""

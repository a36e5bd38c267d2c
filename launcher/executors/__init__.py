"""Executors run a written command.sh; they never build commands themselves."""

"""Benchmarks: each module is a command that prints figures against a bare ceiling timed in
the same run (`python -m benchmarks.<name> --help`); figures in docs/benchmarks.md. Not
part of the installed packages."""

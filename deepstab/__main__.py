"""``python -m deepstab``: the command line (the same commands as ``python cli.py``)."""

from deepstab.cli import cli

if __name__ == "__main__":
    cli(prog_name="python -m deepstab")

"""deepstab command line: `python cli.py --help` (the same commands as `python -m deepstab`)."""

from deepstab.cli import cli

if __name__ == "__main__":
    cli()

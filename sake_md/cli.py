"""``sake-md``: one entry point, each subcommand a thin wrapper over a library function."""

import json

import click

from .errors import SakeMDError


class Group(click.Group):
    """Turn our own errors into one-line click errors, without a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SakeMDError as e:
            raise click.ClickException(str(e)) from e


@click.group(cls=Group)
@click.version_option(package_name="sake-md")
def main():
    """SAKE interatomic potentials: train, evaluate, inspect and run molecular dynamics."""


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON.")
def info(checkpoint, as_json):
    """Show what a checkpoint holds: variant, parameters, species, training data, metrics."""
    from .checkpoint import describe_checkpoint

    summary = describe_checkpoint(checkpoint)
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    else:
        click.echo(format_summary(summary))


def format_summary(summary: dict, indent: int = 0) -> str:
    lines = []
    for key, value in summary.items():
        if isinstance(value, dict) and value:
            lines.append(" " * indent + f"{key}:")
            lines.append(format_summary(value, indent + 2))
        else:
            lines.append(" " * indent + f"{key + ':':22s} {value}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

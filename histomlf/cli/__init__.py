"""The `histomlf` command: one click group, one sub-module per verb.

Heavy libraries (TensorFlow, MLflow) are imported inside the commands, so `histomlf --help`
and `histomlf data scan` start fast.
"""

from __future__ import annotations

import click

from histomlf import __version__
from histomlf.cli.data import data
from histomlf.cli.data_s3 import push
from histomlf.cli.evaluate import cv, evaluate, predict
from histomlf.cli.explain import explain
from histomlf.cli.registry import registry
from histomlf.cli.report import report
from histomlf.cli.server import server
from histomlf.cli.slide import slide
from histomlf.cli.train import train
from histomlf.cli.tune import tune
from histomlf.cli.web import web


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="histomlf")
def main() -> None:
    """MLflow-tracked CNN experiments for IDC detection in breast histopathology."""


main.add_command(data)
main.add_command(train)
main.add_command(cv)
main.add_command(evaluate)
main.add_command(predict)
main.add_command(explain)
main.add_command(registry)
main.add_command(tune)
main.add_command(server)
main.add_command(report)
main.add_command(web)
main.add_command(slide)
data.add_command(push)

"""Every option of the evaluation CLIs and of scripts/fetch_weights.py has help text, and --help shows defaults."""

from __future__ import annotations

import argparse

import pytest

from evaluation import compute_metrics, segmentation
from evaluation.cli_common import HelpFormatter
from scripts import fetch_weights

PARSERS = {
    "compute_metrics": compute_metrics.build_parser,
    "segmentation": segmentation.build_parser,
    "fetch_weights": fetch_weights.build_parser,
}


def _walk(parser: argparse.ArgumentParser, name: str):
    """(parser name, parser) for the parser and every subcommand parser below it."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _walk(sub, f"{name} {sub_name}")


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_action_has_help_and_defaults_are_shown(name):
    for label, parser in _walk(PARSERS[name](), name):
        assert issubclass(parser.formatter_class, HelpFormatter), label
        for action in parser._actions:
            assert action.help and action.help.strip(), f"{label}: {action.option_strings or action.dest} has no help"
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help, f"{label}: subcommand {choice.dest} has no help"
        formatter = parser._get_formatter()
        for action in parser._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                shown = formatter._get_help_string(action)
                assert "%(default)" in shown, f"{label}: default of {action.option_strings[0]} not shown"
        parser.format_help()  # renders without error


def test_defaults_appear_in_help_text():
    text = " ".join(compute_metrics.build_parser().format_help().split())
    assert "--slice-step SLICE_STEP use every N-th slice for LPIPS and 2D FID (default: 1)" in text
    assert "--fid3d-convention {project,medicalnet}" in text and "(default: project)" in text
    seg = segmentation.build_parser()
    evaluate = next(a for a in seg._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    assert "(default: 2000)" in " ".join(evaluate.format_help().split())

"""The ``partial-lora`` command line.

    partial-lora run                      # the main job on the packaged default (MiniLM + BBC News)
    partial-lora ticket [--compare a.json b.json]
    partial-lora train | eval | export | merge | compare

Every option can also come from a YAML file given with ``--config`` (keys are the option
names, with ``-`` or ``_``); flags on the command line win over the file.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from .commands.settings import PACKAGED_DATASETS, Settings, field_names
from .methods import METHODS


class UsageError(Exception):
    """Bad input the user can fix; printed without a traceback, exit status 2."""


def _number(kind: type, what: str) -> Callable[[str], Any]:
    """A command-line (and YAML) parser of one ``int`` / ``float`` with a message saying what it wanted."""

    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None

    parse.__name__ = kind.__name__
    return parse


_int = _number(int, "a whole number")
_float = _number(float, "a number (e.g. 0.9 or 2e-3)")


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _str_list(text: str) -> list[str]:
    return [part.strip() for part in str(text).split(",") if part.strip()]


def _targets(text: str) -> list[str] | str:
    """``query,key,value`` -> a list of suffixes; anything with regex characters stays a regex."""
    if text == "all-linear" or any(ch in text for ch in "()*|\\[]^$+?"):
        return text
    return _str_list(text)


# field -> (argparse type, help). Booleans are flags.
OPTIONS: dict[str, tuple[Callable[[str], Any] | None, str]] = {
    "dataset": (str, f"packaged name ({', '.join(PACKAGED_DATASETS)}), a .csv/.jsonl file, or a datasets folder"),
    "model": (str, "packaged name (minilm, efficientnet-lite0, smollm2), a local Hugging Face folder or a hub id"),
    "task": (str, "classification, image-classification or causal-lm (default: from the dataset)"),
    "text_column": (str, "text column of a CSV/JSONL/datasets input"),
    "label_column": (str, "label column of a CSV/JSONL/datasets input"),
    "out": (str, "output folder"),
    "overwrite": (None, "replace results already in --out"),
    "resume": (None, "continue an interrupted run from its last checkpoint"),
    "train_per_class": (_int, "training examples per class (a seeded sample; default: dataset's)"),
    "validation_per_class": (_int, "validation examples per class, carved from the training pool (default: dataset's)"),
    "test_per_class": (_int, "test examples per class (default: dataset's)"),
    "validation_fraction": (_float, "fraction of the training pool held out for validation when no "
                                   "--validation-per-class is given (stratified, seeded; default 0.1)"),
    "test_fraction": (_float, "fraction held out for testing when no --test-per-class is given (stratified, seeded)"),
    "max_length": (_int, "maximum tokens per text (longer texts are truncated)"),
    "ticket": (str, "use this ticket.json instead of deriving one"),
    "ticket_method": (str, "svd (default), snip, imp, uniform or svd-layerwise"),
    "shots": (_int, "few-shot examples per class for the ticket"),
    "threshold": (_float, "performance threshold tau in (0, 1] (for --ticket-method uniform: the keep ratio)"),
    "threshold_mode": (str, "relative (above chance, default) or absolute (metric >= tau * baseline)"),
    "metric": (str, "accuracy, macro_f1, exact_match or neg_loss (default: dataset's)"),
    "method": (str, f"one of {', '.join(METHODS)}"),
    "methods": (_str_list, "comma-separated methods to compare"),
    "rank": (_int, "adapter rank r"),
    "alpha": (_float, "LoRA alpha (default 2 * rank)"),
    "target_modules": (_targets, "comma-separated name suffixes, a regex, or all-linear"),
    "modules_to_save": (_str_list, "comma-separated modules trained in full (e.g. classifier)"),
    "budget": (_int, "total trainable-parameter budget for the adapters (rescales the ticket)"),
    "seed": (_int, "seed"),
    "seeds": (_int_list, "comma-separated seeds, e.g. 0,1,2"),
    "epochs": (_int, "training epochs"),
    "learning_rate": (_float, "peak learning rate (in LoRA's units: full fine-tuning trains at x0.05, VeRA and "
                             "random masking at x10)"),
    "lr_grid": (_float_list, "comma-separated learning rates to choose from per method, on validation "
                             "(e.g. 1e-3,2e-3,5e-3,1e-2); replaces --learning-rate"),
    "lr_grid_seeds": (_int, "how many of the first seeds train at every rate of --lr-grid (default 1)"),
    "lr_grid_extend": (_int, "with --lr-grid: when the best validation score is at the highest (lowest) rate tried, "
                             "also try twice (half) that rate, up to this many more rates per search (default 0)"),
    "batch_size": (_int, "batch size"),
    "weight_decay": (_float, "AdamW weight decay"),
    "warmup_ratio": (_float, "fraction of steps for linear warm-up"),
    "max_grad_norm": (_float, "gradient clipping norm"),
    "checkpoint_every": (_int, "steps between checkpoints"),
    "validate_every_epoch": (None, "score the validation split after every epoch, not only after the last "
                                   "(one more forward pass over it per epoch)"),
    "thresholds": (_float_list, "comma-separated thresholds to sweep, e.g. 0.7,0.8,0.9"),
    "ranks": (_int_list, "comma-separated ranks to sweep, e.g. 4,8,16"),
}

COMMON = ["dataset", "model", "task", "text_column", "label_column", "out", "overwrite", "max_length",
          "train_per_class", "validation_per_class", "test_per_class", "validation_fraction", "test_fraction", "seed"]
TICKET = ["ticket", "ticket_method", "shots", "threshold", "threshold_mode", "metric"]
ADAPTER = ["rank", "alpha", "target_modules", "modules_to_save", "budget"]
SCHEDULE = ["epochs", "learning_rate", "batch_size", "weight_decay", "warmup_ratio", "max_grad_norm",
            "checkpoint_every", "validate_every_epoch", "resume"]
COMMANDS: dict[str, tuple[str, list[str]]] = {
    "run": ("derive a ticket, train Partial-LoRA and LoRA side by side, write results and a report",
            COMMON + TICKET + ADAPTER + SCHEDULE + ["methods", "seeds", "lr_grid", "lr_grid_seeds",
                                                    "lr_grid_extend"]),
    "ticket": ("derive per-layer keep ratios from a few labelled examples",
               ["dataset", "model", "task", "text_column", "label_column", "out", "overwrite", "max_length",
                "train_per_class", "validation_per_class", "test_per_class", "validation_fraction", "test_fraction",
                "seed", "target_modules"] + TICKET[1:]),
    "train": ("train one method and save its adapter", COMMON + TICKET + ADAPTER + SCHEDULE + ["method"]),
    "eval": ("evaluate a saved adapter on the test split", COMMON),
    "export": ("export a Partial-LoRA adapter folder as a PEFT LoRA folder", ["model", "dataset", "out", "overwrite"]),
    "merge": ("merge an adapter into its base model and save the merged model", ["model", "dataset", "out", "overwrite"]),
    "compare": ("train several methods / seeds / thresholds / ranks side by side",
                COMMON + TICKET + ADAPTER + SCHEDULE + ["methods", "seeds", "thresholds", "ranks", "lr_grid",
                                                        "lr_grid_seeds", "lr_grid_extend"]),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="partial-lora", description="Partial-LoRA: tickets, training, comparison and export of sparse LoRA adapters.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, options) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--config", help="YAML file with any of these options")
        sub.add_argument("--quiet", action="store_true", help="no progress bars")
        for option in options:
            kind, text = OPTIONS[option]
            flag = "--" + option.replace("_", "-")
            if kind is None:
                sub.add_argument(flag, action="store_true", default=None, help=text)
            else:
                sub.add_argument(flag, type=kind, default=None, help=text)
        if name == "ticket":
            sub.add_argument("--compare", nargs=2, metavar=("A_JSON", "B_JSON"), help="print the overlap of two tickets")
        if name in ("eval", "export", "merge"):
            sub.add_argument("adapter", help="adapter folder written by train/run")
    return parser


def _version() -> str:
    from . import __version__

    return __version__


def read_yaml_config(path: str, allowed: Sequence[str]) -> dict[str, Any]:
    """Options from a YAML file, parsed exactly as the same flags on the command line.

    Keys are option names (``-`` or ``_``); unknown or repeated keys are an error. Every value
    is read as the text it is written as (YAML's own typing is not used: ``seed: 010`` is the
    same as ``--seed 010``) and goes through the flag's own parser; a flag (``overwrite``,
    ``resume``) takes ``true`` / ``false`` (or ``yes`` / ``no``), a comma-separated option
    (``methods``, ``seeds``, ``target_modules``...) also a YAML list. Anchors, aliases, tags
    and nested values are refused. Errors name the key.
    """
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--config {path}: no such file")
    try:
        text = file.read_text(encoding="utf-8-sig")
        values = _plain_yaml(text, path)
    except UnicodeDecodeError as err:
        raise UsageError(f"--config {path} is not UTF-8 text ({err}); save it as UTF-8") from None
    except yaml.YAMLError as err:
        raise UsageError(f"--config {path} is not valid YAML: {err}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UsageError(f"--config {path} must hold a mapping of option: value")
    normalised: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name in normalised:
            raise UsageError(f"--config {path}: option {name} is given twice; keep one")
        normalised[name] = value
    unknown = sorted(set(normalised) - set(allowed))
    if unknown:
        raise UsageError(f"--config {path}: unknown option(s) {unknown}; this command accepts {sorted(allowed)}")
    return {key: _yaml_value(path, key, value) for key, value in normalised.items()}


MAX_YAML_DEPTH = 2  # the file's mapping, and a list as an option's value


PLAIN_TAGS = {f"tag:yaml.org,2002:{kind}" for kind in ("str", "int", "float", "bool")}  # read as text anyway
NULL_WORDS = ("null", "Null", "NULL", "~")


def _plain_yaml(text: str, path: str) -> Any:
    """The document as plain text values: refuses anchors, aliases, other tags, nulls, nesting
    and repeated keys, naming the option each problem is under."""
    depth, key, expecting_key = 0, None, False

    def refuse(problem: str) -> UsageError:
        return UsageError(f"--config {path}: " + (f"{key}: " if key is not None else "") + problem)

    for event in yaml.parse(text, Loader=yaml.BaseLoader):
        is_node = isinstance(event, (yaml.ScalarEvent, yaml.AliasEvent, yaml.MappingStartEvent, yaml.SequenceStartEvent))
        if is_node and depth == 1 and expecting_key:  # a key of the option mapping
            key = event.value if isinstance(event, yaml.ScalarEvent) else None
            expecting_key = False
            continue
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise refuse("anchors and aliases (&name / *name) are not supported in option files; write each value out")
        if getattr(event, "tag", None) not in (None, "!", *PLAIN_TAGS):
            raise refuse(f"YAML tags ({event.tag}) are not supported; write plain values")
        if isinstance(event, yaml.ScalarEvent) and event.style is None and event.value in NULL_WORDS and depth >= 1:
            raise refuse(f"{event.value} is no value; give one, or leave the key out")
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise refuse("values nest too deep; an option takes one value or a list of values")
            expecting_key = depth == 1 and isinstance(event, yaml.MappingStartEvent)
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
            expecting_key = depth == 1
        elif isinstance(event, yaml.ScalarEvent) and depth == 1:
            expecting_key = True  # a value of the option mapping is done
    node = yaml.compose(text, Loader=yaml.BaseLoader)
    if isinstance(node, yaml.MappingNode):
        keys = [key.value for key, _ in node.value]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise UsageError(f"--config {path}: option(s) {repeated} given more than once; keep one of each")
    return yaml.load(text, Loader=yaml.BaseLoader)


LIST_OPTIONS = {name for name, (kind, _) in OPTIONS.items() if kind in (_str_list, _int_list, _float_list, _targets)}
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on"), ("false", "no", "off")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _yaml_value(path: str, key: str, value: Any) -> Any:
    """One YAML value (text, or a list of texts) through the option's own command-line parser."""
    kind = OPTIONS[key][0]
    where = f"--config {path}: {key}"
    if value is None or value == "" or value == []:
        raise UsageError(f"{where} has no value; give one, or leave the key out")
    if isinstance(value, dict):
        raise UsageError(f"{where}: got a mapping ({_shown(value)}); expected what --{key.replace('_', '-')} takes")
    if kind is None:  # a flag
        word = value.lower() if isinstance(value, str) else None
        if word in TRUE_WORDS or word in FALSE_WORDS:
            return word in TRUE_WORDS
        raise UsageError(f"{where}: expected true or false, got {_shown(value)}; write {key}: true, or leave it out")
    if isinstance(value, list):
        if key not in LIST_OPTIONS:
            raise UsageError(f"{where}: got a list ({_shown(value)}); --{key.replace('_', '-')} takes one value")
        if not all(isinstance(v, str) and v for v in value):
            raise UsageError(f"{where}: expected a list of plain values, got {_shown(value)}")
        text = ",".join(value)
    else:
        text = value
    if key not in ("methods", "target_modules", "modules_to_save") and text.strip().lower() in (*TRUE_WORDS, *FALSE_WORDS):
        raise UsageError(f"{where}: got {_shown(value)}; expected what --{key.replace('_', '-')} takes")
    try:
        return kind(text)
    except (argparse.ArgumentTypeError, ValueError) as err:
        raise UsageError(f"{where}: {err}") from None


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Defaults < YAML file < command-line flags."""
    options = COMMANDS[args.command][1]
    values: dict[str, Any] = {}
    if args.config:
        values.update(read_yaml_config(args.config, options))
    values.update({k: v for k, v in vars(args).items() if k in options and v is not None})
    if "seed" in values and "seeds" not in values:
        values["seeds"] = [values["seed"]]
    values["progress"] = not args.quiet
    known = set(field_names())
    try:
        return Settings(**{k: v for k, v in values.items() if k in known})
    except (TypeError, ValueError) as err:
        raise UsageError(str(err)) from None


def expected_failure(err: BaseException) -> str | None:
    """The one-line message for a failure the user can fix, or None for a bug (shown as a traceback).

    Bad input (:class:`UsageError`, ``ValueError`` and its damaged-file errors), missing or
    unwritable files and folders (``OSError``: no space left, read-only, a file where a folder
    is expected), damaged safetensors files, and a run that diverged.
    """
    from .training import CheckpointError, TrainingDiverged

    if isinstance(err, CheckpointError):
        return (f"{err} (from the command line: --resume continues from the last whole checkpoint, "
                "--overwrite starts the run over)")
    if isinstance(err, TrainingDiverged):
        return (f"training diverged: {err}. Lower the learning rate (--learning-rate / --lr-grid) or the clipping "
                "norm (--max-grad-norm), and check the data; --resume would only repeat it")
    if isinstance(err, (UsageError, ValueError)):
        return str(err)
    if isinstance(err, OSError):
        return _os_error(err)
    if type(err).__name__ == "SafetensorError":
        text = str(err)
        for marker, hint in (("No space left", "no space left on the device; free some space or choose another --out"),
                             ("Permission denied", "permission denied; choose a folder you can write (--out)"),
                             ("Read-only file system", "the file system is read-only; choose another --out")):
            if marker in text:
                return f"{hint} ({text})"
        return f"a safetensors file is damaged or incomplete ({text}); restore or re-create it"
    return None


def _os_error(err: OSError) -> str:
    import errno

    where = f" ({err.filename})" if getattr(err, "filename", None) else ""
    hints = {
        errno.ENOSPC: "no space left on the device; free some space or choose another --out",
        errno.EACCES: "permission denied; choose a folder you can write (--out) and files you can read",
        errno.EPERM: "operation not permitted; choose a folder you can write (--out)",
        errno.EROFS: "the file system is read-only; choose another --out",
        errno.ENOTDIR: "a file stands where a folder is expected; remove it or choose another path",
        errno.EISDIR: "a folder stands where a file is expected; give a file",
        errno.ENOENT: "no such file or folder; check the path",
    }
    hint = hints.get(err.errno, err.strerror or "the operating system refused the operation")
    detail = f"{err}" if isinstance(err, (FileNotFoundError, FileExistsError)) and not err.filename else hint + where
    return detail


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices, not the user's
    try:
        settings = settings_from_args(args)
        from . import commands

        return int(getattr(commands, f"{args.command}_command")(settings, args) or 0)
    except Exception as err:  # noqa: BLE001 - expected failures become one message; others re-raise
        message = expected_failure(err)
        if message is None:
            raise
        print(f"partial-lora {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""The familiar spellings of torchvision's and timm's scripts: each accepted one gives exactly the Config of
imnet's own flag, in both ``--flag value`` and ``--flag=value`` forms; each whose meaning differs (flags.POINTERS,
VALUES, NEEDS, EVAL_POINTERS) stops with one line (exit 2) naming what to type instead."""

from __future__ import annotations

import re

import pytest

import eval as imnet_eval
import train
from imnet.run import config, flags

BASE = ["--output", "o"]

# alias -> (their command line, imnet's). Each must resolve to the same Config, and unless the alias is dropped (a
# value that is imnet's fixed behaviour), to another Config than without it (the alias is not ignored).
SAME = {
    "--data-path": (["--data-path", "/data/in"], ["--data", "/data/in"]),
    "--wd": (["--wd", "0.05"], ["--weight-decay", "0.05"]),
    "--lr-warmup-epochs": (["--lr-warmup-epochs", "5", "--lr-warmup-method", "linear", "--lr-warmup-decay", "0.033"],
                           ["--warmup-epochs", "5", "--warmup-start-factor", "0.033"]),
    "--lr-warmup-method": (["--lr-warmup-method", "linear"], []),
    "--lr-warmup-decay": (["--lr-warmup-decay", "0.2"], ["--warmup-start-factor", "0.2"]),
    "--lr-min": (["--lr-min", "1e-5"], ["--min-lr", "1e-5"]),
    "--mixup-alpha": (["--mixup-alpha", "0.2"], ["--mixup", "0.2"]),
    "--cutmix-alpha": (["--cutmix-alpha", "1.0"], ["--cutmix", "1.0"]),
    "--clip-grad-norm": (["--clip-grad-norm", "1.5"], ["--clip-grad", "1.5"]),
    # after --sched step, so that the alias must really set cosine
    "--lr-scheduler": (["--sched", "step", "--lr-scheduler", "CosineAnnealingLR"],
                       ["--sched", "step", "--sched", "cosine"]),
    "--data-dir": (["--data-dir", "/data/in"], ["--data", "/data/in"]),
    "--grad-accum-steps": (["--grad-accum-steps", "2"], ["--accum-steps", "2"]),
    "--log-interval": (["--log-interval", "7"], ["--log-every", "7"]),
    "--hflip": (["--hflip", ".50"], []),
    "--mixup-prob": (["--mixup-prob", "0.3"], ["--mix-prob", "0.3"]),
    "--mixup-switch-prob": (["--mixup-switch-prob", "0.7"], ["--switch-prob", "0.7"]),
    "--initial-checkpoint": (["--initial-checkpoint", "w.pth"], ["--init-from", "w.pth"]),
    "--scale": (["--scale", "0.3", "1.0"], ["--crop-scale", "0.3", "1.0"]),
    "--use-deterministic-algorithms": (["--use-deterministic-algorithms"], ["--deterministic"]),
    "--output-dir": (["--output-dir", "p"], ["--output", "p"]),
    "--smoothing": (["--smoothing", "0.1"], ["--label-smoothing", "0.1"]),
    "--reprob": (["--reprob", "0.25"], ["--random-erase", "0.25"]),
    "--remode": (["--remode", "const"], ["--random-erase-mode", "const"]),
    "--model-ema": (["--model-ema"], ["--ema"]),
    "--bce-loss": (["--bce-loss"], ["--bce"]),
}

# alias case -> (their command line, what the message must say: the imnet flag or the conversion)
DIFFERENT = {
    "--lr-step-size": (["--lr-step-size", "30"], "--sched step --lr-milestones S 2S 3S"),
    "--print-freq": (["--print-freq", "10"], "type --log-every N"),
    "--test-only": (["--test-only"], "python eval.py --checkpoint RUN/best.pt"),
    "--model-ema-decay": (["--model-ema-decay", "0.99998"], "--ema-decay D for timm's; imnet.run.recipes.torchvision"),
    "--model-ema-steps": (["--model-ema-steps", "32"], "--ema-every K"),
    "--img-size": (["--img-size", "224"], "--train-crop-size N --val-crop-size N"),
    "--aa": (["--aa", "rand-m9-mstd0.5-inc1"], "--auto-augment ra --ra-magnitude M --ra-num-ops 2"),
    "--warmup-lr": (["--warmup-lr", "1e-5"], "--warmup-start-factor F with F = warmup LR / peak LR"),
    "--amp-dtype": (["--amp-dtype", "bfloat16"], "--amp bf16"),
    "--lr-scheduler steplr": (["--lr-scheduler", "steplr"], "--lr-milestones S 2S 3S"),
    "--lr-scheduler exponentiallr": (["--lr-scheduler=exponentiallr"], "exponentiallr has no imnet counterpart"),
    "--hflip 0.3": (["--hflip", "0.3"], "drop --hflip"),
    "--lr-warmup-method constant": (["--lr-warmup-method", "constant"], "imnet's warmup is linear"),
    "--lr-warmup-epochs alone": (["--lr-warmup-epochs", "5"], "torchvision's warmup is constant unless"),
    "--pretrained": (["--pretrained"], "--weights ResNet50_Weights.DEFAULT"),
    "--input-size": (["--input-size", "3", "224", "224"], "--train-crop-size N --val-crop-size N"),
    "--decay-epochs": (["--decay-epochs", "30"], "--sched step --lr-milestones E 2E 3E"),
    "--decay-rate": (["--decay-rate", "0.1"], "--lr-gamma RATE"),
    "--experiment": (["--experiment", "x"], "--output FOLDER"),
    "--ra-sampler": (["--ra-sampler"], "--ra-reps 3"),
    "--norm-weight-decay": (["--norm-weight-decay", "0"], "--no-decay-on norm"),
    "--bias-weight-decay": (["--bias-weight-decay", "0"], "--no-decay-on bias"),
    "--transformer-embedding-decay": (["--transformer-embedding-decay", "0"], "--no-decay-on embedding"),
}


def resolved(argv):
    argv = BASE + argv + ([] if any(a.split("=")[0] in ("--data", "--data-path", "--data-dir") for a in argv)
                          else ["--data", "d"])
    below, given = flags.parse_args(argv)
    return config.resolve(below, given, 1)


def with_equals(argv):
    """--flag value -> --flag=value (argparse's other form; a flag of one value)."""
    out = []
    for i, a in enumerate(argv):
        one = i + 1 == len(argv) or argv[i + 1].startswith("--")
        if out and out[-1].startswith("--") and "=" not in out[-1] and not a.startswith("--") and one:
            out[-1] += "=" + a
        else:
            out.append(a)
    return out


def familiar(parser) -> set:
    """The parser's spellings of other scripts' flags with imnet's meaning (option strings after the first)."""
    return {s for a in flags.settings(parser).values() for s in a.option_strings[1:]
            if s.startswith("--") and not s.startswith("--no-")}


def test_every_alias_has_a_case_and_none_is_a_flag_of_imnet():
    parser = flags.build_parser()
    assert set(SAME) == familiar(parser) | set(flags.VALUES)
    # refused: a meaning of their own; a value outside the map; given without the flag it needs
    assert {c.split()[0] for c in DIFFERENT} == set(flags.POINTERS) | set(flags.VALUES) | set(flags.NEEDS)
    assert set(flags.NEEDS) <= familiar(parser)
    parsers = (((flags.POINTERS, *flags.VALUES.values(), *flags.NEEDS.values()), parser),
               ((flags.EVAL_POINTERS,), imnet_eval.build_parser()))
    known = {n for _, p in parsers for n in p.option_names()}
    for tables, p in parsers:
        hints = [h for t in tables for h in (t.values() if isinstance(t, dict) else [t[-1]])]
        assert hints
        for hint in hints:  # every flag a message names is imnet's (the conversion works) or a foreign one
            for word in re.findall(r"--[a-z][a-z-]*", hint):
                assert word in known, (hint, word)
    for target, _, _ in flags.VALUES.values():
        assert target is None or target in flags.settings(parser)


@pytest.mark.parametrize("form", ["space", "equals"])
@pytest.mark.parametrize("alias", sorted(SAME))
def test_an_alias_resolves_to_the_config_of_imnets_flag(alias, form):
    theirs, ours = SAME[alias]
    if form == "equals":
        theirs, ours = with_equals(theirs), with_equals(ours)
    assert resolved(theirs) == resolved(ours)
    before = theirs[:[a.split("=")[0] for a in theirs].index(alias)]  # the case's command line before the alias
    if ours != before:
        assert resolved(ours) != resolved(before), "the case does not change anything, so it proves nothing"


@pytest.mark.parametrize("case", sorted(DIFFERENT))
def test_a_flag_of_another_meaning_stops_with_the_conversion(case, tmp_path, capsys):
    argv, needle = DIFFERENT[case]
    out = tmp_path / "out"
    assert train.main(argv + ["--data", str(tmp_path), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and argv[0].split("=")[0] in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and "usage:" not in err, err
    assert not out.exists()


def test_help_lists_the_aliases(capsys):
    with pytest.raises(SystemExit):
        flags.build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in [*SAME, *flags.POINTERS, *flags.NEEDS]:
        assert name in text, name
    assert "--data-path (--data)" in text and "--lr-scheduler (--sched, cosineannealinglr = cosine)" in text


def test_eval_accepts_the_evaluation_spellings(capsys):
    parse = lambda *a: imnet_eval.build_parser().parse_args(list(a))
    assert parse("--data-path", "/v").data == parse("--data-dir=/v").data == "/v"
    assert parse("--model-ema").use_ema and not parse().use_ema
    for argv, needle in ((["--img-size", "288"], "--val-crop-size N"), (["--amp-dtype", "float16"], "--amp fp16"),
                         (["--test-only"], "drop --test-only")):
        assert imnet_eval.main(["--model", "resnet18", "--bench"] + argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err

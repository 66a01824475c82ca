"""A run's config.json replays the run: every setting declared in the parser is written and read back."""

import dataclasses

from imnet.run import config, flags


def resolved(argv):
    below, given = flags.parse_args(argv)
    return config.resolve(below, given, 1)


def test_config_json_holds_every_setting_and_replays_the_run(tmp_path):
    cfg = resolved(["--data", "d", "--output", "o", "--model", "resnet18", "--epochs", "7", "--ema",
                    "--ema-decay", "0.99", "--ema-every", "3", "--mixup", "0.2", "--label-smoothing", "0.1",
                    "--no-decay-on", "norm", "bias", "--val-crop-size", "160", "--crop-pct", "0.8", "--seed", "9",
                    "--sched", "step", "--lr-milestones", "2", "5", "--random-erase", "0.25", "--opt", "adamw"])
    assert set(cfg.flags()) == set(flags.settings(flags.build_parser()))
    path = tmp_path / "config.json"
    config.write_config_file(cfg, path)
    again = resolved(["--config", str(path)])
    # what differs is only how the settings were given: from this file, not typed
    assert dataclasses.replace(again, config=None, opt_given=True) == cfg
    assert (again.ema_decay, again.eval_policy.resize_size) == (0.99, 200)

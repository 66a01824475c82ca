"""A run's config.json replays the run: every setting declared in the parser is written and read back."""

import dataclasses
import json

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


def test_dry_run_is_off_in_config_json_and_older_files_replay(tmp_path):
    """A run's file holds dry_run null (--dry-run takes an optional value: plan, loader); a file of the time it was
    a switch (false) replays, and true means the bare flag."""
    cfg = resolved(["--data", "d", "--output", "o", "--dry-run", "loader"])
    assert cfg.dry_run == "loader" and cfg.flags()["dry_run"] is None
    path = tmp_path / "config.json"
    for stored, replayed in ((False, None), (True, "plan")):
        path.write_text(json.dumps({**cfg.flags(), "dry_run": stored}))
        assert resolved(["--config", str(path)]).dry_run == replayed

"""The ``coophash.cli`` package: no import-time side effects, typed method options, progress through callbacks."""
import importlib
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from coophash.cli import COMMANDS, cli
from coophash.cli.common import StageBars, build_config, training_progress
from coophash.train import runs
from coophash.train.progress import Progress


def _python(code: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**base, **env},
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


# ------------------------------------------------------------------------------ import side effects
def test_importing_the_cli_loads_no_torch_and_sets_nothing():
    out = _python("import os, sys, coophash.cli\n"
                  "print('torch' in sys.modules, 'numpy' in sys.modules, os.environ.get('OMP_WAIT_POLICY'))")
    assert out == "False False None"


def test_main_sets_omp_wait_policy_before_torch_and_respects_the_user():
    code = ("import os, sys\nfrom coophash.cli import main\n"
            "try:\n    main(['list'])\nexcept SystemExit:\n    pass\n"
            "print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)")
    assert _python(code).splitlines()[-1] == "PASSIVE True"
    assert _python(code, OMP_WAIT_POLICY="ACTIVE").splitlines()[-1] == "ACTIVE True"


def test_command_modules_attach_no_log_handler_and_import_no_old_modules():
    code = ("import importlib, logging, os\nfrom coophash.cli import COMMANDS\n"
            "for target in COMMANDS.values():\n"
            "    module, attr = target.split(':')\n"
            "    assert callable(getattr(importlib.import_module(module), attr)), target\n"
            "loggers = [logging.root] + [lg for name, lg in logging.root.manager.loggerDict.items()\n"
            "                            if isinstance(lg, logging.Logger) and name.startswith('coophash')]\n"
            "print(sum(len(lg.handlers) for lg in loggers), os.environ.get('OMP_WAIT_POLICY'))")
    assert _python(code) == "0 None"
    for old in ("coophash.cli_bench", "coophash.cli_coophash", "coophash.cli_fakereg"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(old)


def test_python_dash_m_runs_the_tool():
    out = subprocess.run([sys.executable, "-m", "coophash", "list"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("methods:")
    assert sorted(cli.list_commands(None)) == sorted(COMMANDS)


# ------------------------------------------------------------------------------ typed options
@pytest.fixture()
def captured(monkeypatch):
    """``coophash train`` with the pipeline replaced by a recorder of the config it receives."""
    import coophash.pipeline as pipeline

    seen = {}

    def fake_train(cfg, run_dir, **kw):
        seen.update(cfg=cfg, run_dir=run_dir, **kw)
        return SimpleNamespace(results={"map@all": 0.5})

    monkeypatch.setattr(pipeline, "train", fake_train)
    return seen


def _train(tmp_path, *args):
    r = CliRunner().invoke(cli, ["train", "--method", "fakereg", "--out", str(tmp_path), "--quiet", *args])
    assert r.exit_code == 0, r.output
    return r


def test_method_options_reach_the_config_as_click_parsed_them(tmp_path, captured):
    r = _train(tmp_path, "--gan-dir", "010", "--fake-weight", "0.5", "--gan-conditional", "true",
               "--gan-width", "16", "--fakes", "2024")
    args = captured["cfg"].method_args
    assert args["gan_dir"] == "010" and isinstance(args["gan_dir"], str)  # not the octal integer 8
    assert args["fakes"] == "2024"
    assert args["fake_weight"] == 0.5 and isinstance(args["fake_weight"], float)
    assert args["gan_conditional"] is True and args["gan_width"] == 16
    # the CLI made the run folder through the training layer and only printed it
    assert captured["run_dir"].name == "00000-" + runs.run_tag(captured["cfg"])
    assert f"run folder: {captured['run_dir']}" in r.output and "map@all=0.5000" in r.output


@pytest.mark.parametrize("text,value", [("true", True), ("false", False), ("yes", True), ("0", False)])
def test_bool_method_option_parses_as_boolean(tmp_path, captured, text, value):
    _train(tmp_path, "--gan-conditional", text)
    assert captured["cfg"].method_args["gan_conditional"] is value


def test_bool_method_option_refuses_other_text(tmp_path, captured):
    r = CliRunner().invoke(cli, ["train", "--out", str(tmp_path), "--quiet", "--gan-conditional", "maybe"])
    assert r.exit_code != 0 and "gan-conditional" in r.output and "cfg" not in captured


def test_set_keeps_yaml_parsing_and_method_options_win(tmp_path, captured):
    _train(tmp_path, "--set", "method_args.gan_dir=010", "--set", "method_args.fake_weight=0.25")
    recipe = {"fake_bn": "separate"}  # fakereg's validated recipe fills what the user left open
    assert captured["cfg"].method_args == {**recipe, "gan_dir": 8, "fake_weight": 0.25}  # YAML: 010 is octal 8
    _train(tmp_path, "--set", "method_args.fake_weight=0.25", "--fake-weight", "0.75")
    assert captured["cfg"].method_args == {**recipe, "fake_weight": 0.75}


def test_typed_string_survives_the_run_folder(tmp_path):
    """A real (0-epoch) run: the saved config keeps ``gan_dir`` a string."""
    r = CliRunner().invoke(cli, ["train", "--method", "fakereg", "--dataset", "digits", "--epochs", "0", "--bits", "8",
                                 "--fakes", "unused.safetensors", "--gan-dir", "010", "--out", str(tmp_path),
                                 "--quiet", "--set", "protocol_args.query_per_class=10",
                                 "--set", "protocol_args.val_per_class=10"])
    assert r.exit_code == 0, r.output
    (run,) = runs.list_runs(tmp_path)
    assert runs.read_config(run)["method_args"]["gan_dir"] == "010"


def test_build_config_layers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("bits: 16\nmethod_args: {gan_dir: a, fake_weight: 0.1}\nloss_args: {alpha: 1}\n")
    cfg = build_config(str(path), {"bits": 24, "lr": None}, ["loss_args.beta=2", "bits=12"], {"gan_dir": "010"})
    assert cfg.bits == 12 and cfg.lr == 1e-3
    assert cfg.loss_args == {"alpha": 1, "beta": 2}
    assert cfg.method_args == {"gan_dir": "010", "fake_weight": 0.1}


# ------------------------------------------------------------------------------ progress
class FakeBar:
    def __init__(self, total, desc, leave):
        self.total, self.desc, self.leave, self.n, self.postfix, self.closed = total, desc, leave, 0, None, False

    def set_postfix_str(self, text, refresh=True):
        self.postfix = text

    def refresh(self):
        pass

    def close(self):
        self.closed = True


def _steps(stage, epochs, spe, values):
    return [Progress(stage, e, epochs, s, spe, values) for e in range(epochs) for s in range(1, spe + 1)]


def test_a_bar_per_stage_from_progress_totals():
    bars = []

    def make(total, desc, leave):
        bars.append(FakeBar(total, desc, leave))
        return bars[-1]

    cfg = SimpleNamespace(method="fakereg", loss="dpsh")
    progress = training_progress(cfg, quiet=False, make_bar=make)
    gan = _steps("gan", 2, 3, {"discriminator/total": 1.25, "generator/total": 0.5})
    for p in gan[:4]:
        progress(p)
    assert len(bars) == 1 and bars[0].desc == "train gan" and bars[0].total == 6 and bars[0].n == 4
    assert bars[0].postfix == "D=1.250, G=0.500, epoch=2"
    for p in gan[4:] + _steps("fakereg", 1, 5, {"hash/total": 0.125})[:2]:
        progress(p)
    assert bars[0].closed and bars[0].n == 6
    assert bars[1].desc == "train fakereg/dpsh" and bars[1].total == 5 and bars[1].n == 2
    assert bars[1].postfix == "loss=0.1250, epoch=1" and not bars[1].closed
    progress.close()
    assert bars[1].closed


def test_quiet_prints_epoch_lines_of_earlier_stages_only(capsys):
    progress = training_progress(SimpleNamespace(method="fakereg", loss="dpsh"), quiet=True)
    for p in _steps("gan", 2, 2, {"discriminator/total": 1.0, "generator/total": 2.0}):
        progress(p)
    for p in _steps("fakereg", 1, 2, {"hash/total": 0.1}):
        progress(p)
    err = capsys.readouterr().err.splitlines()
    assert err == ["[gan] epoch 1/2: discriminator 1.0000  generator 2.0000",
                   "[gan] epoch 2/2: discriminator 1.0000  generator 2.0000"]


def test_stage_bars_start_again_for_a_new_stage_of_the_same_name():
    bars = []
    sb = StageBars(lambda p: p.stage, make_bar=lambda t, d, l: bars.append(FakeBar(t, d, l)) or bars[-1])
    for p in _steps("a", 1, 2, {}) + _steps("b", 1, 3, {}):
        sb(p)
    assert [(b.desc, b.total, b.closed) for b in bars] == [("a", 2, True), ("b", 3, True)]


def test_train_command_passes_its_progress_callback(tmp_path, captured):
    _train(tmp_path)
    assert callable(captured["progress"]) and captured["resume"] is False


def test_results_json_is_what_the_cli_prints(tmp_path):
    r = CliRunner().invoke(cli, ["train", "--dataset", "digits", "--epochs", "1", "--bits", "8", "--out",
                                 str(tmp_path), "--quiet", "--set", "protocol_args.query_per_class=10",
                                 "--set", "protocol_args.val_per_class=10"])
    assert r.exit_code == 0, r.output
    (run,) = runs.list_runs(tmp_path)
    res = json.loads((run / "results.json").read_text())
    assert f"map@all={res['map@all']:.4f}" in r.output

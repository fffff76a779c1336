"""params.yaml validation: every malformed file is refused with a message that names the
file, the field and what was expected (STUDY.md "Protocol", "Tasks", "Cells")."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, base_env, make_project

from misfit.core.config import ConfigError, load_params

SOURCE = (REPO / "params.yaml").read_text()
BASE = yaml.safe_load(SOURCE)


def line_of(text: str, needle: str, occurrence: int) -> int:
    """1-based line number of the occurrence-th (1-based) line equal to needle."""
    hits = [number for number, line in enumerate(text.splitlines(), 1) if line == needle]
    return hits[occurrence - 1]


def write(tmp_path: Path, params) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def refusal(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    message = str(caught.value)
    # the file comes first, so a stage's one-line error says where to look
    assert message.startswith(f"{path}:"), message
    return message


def mutated(change) -> dict:
    params = copy.deepcopy(BASE)
    change(params)
    return params


def delete(section: str, key: str | None = None):
    def change(params):
        if key is None:
            del params[section]
        else:
            del params[section][key]
    return change


def set_(section: str, key: str | None, value):
    def change(params):
        if key is None:
            params[section] = value
        else:
            params[section][key] = value
    return change


DELETE = object()  # a field value meaning: remove the key


def cell(cell_id: str, **fields):
    def change(params):
        for name, value in fields.items():
            if value is DELETE:
                del params["cells"][cell_id][name]
            else:
                params["cells"][cell_id][name] = value
    return change



def test_the_repository_params_are_valid():
    # every refusal below must come from its one mutation, not from the base file
    params = load_params(REPO / "params.yaml")
    assert len(params.cells) == 42
    assert all(key == cell.cell_id() for key, cell in params.cells.items())
    assert params.protocol.patience == 10 and params.protocol.batch_size == 32
    assert params.protocol.lr == 0.001
    assert (params.data.n_train, params.data.n_valid, params.data.n_test) == (2000, 3000, 10000)


def test_the_dumped_base_round_trips(tmp_path):
    # the tests write params with yaml.safe_dump: that alone must not break the file
    assert load_params(write(tmp_path, BASE)) == load_params(REPO / "params.yaml")


BSC = "binary-softmax-ce"
RNM = "regression-none-mse-zscore"

# (change, fragments the message must hold: the field, then what was expected)
MALFORMED = [
    pytest.param(delete("protocol"), ["protocol: missing", "required"], id="missing-section"),
    pytest.param(delete("protocol", "lr"), ["protocol.lr: missing", "required"], id="missing-protocol-lr"),
    pytest.param(delete("data", "n_test"), ["data.n_test: missing", "required"], id="missing-data-n_test"),
    pytest.param(cell(BSC, loss=DELETE), [f"cells.{BSC}.loss: missing", "required"], id="missing-cell-loss"),
    pytest.param(cell(BSC, variant=DELETE), [f"cells.{BSC}.variant: missing", "required"],
                 id="missing-cell-variant-key"),
    pytest.param(set_("optimizer", None, "sgd"), ["optimizer: unknown key"], id="unknown-top-level"),
    pytest.param(set_("protocol", "learning_rate", 0.01), ["protocol.learning_rate: unknown key"],
                 id="unknown-nested"),
    pytest.param(cell(BSC, dropout=0.5), [f"cells.{BSC}.dropout: unknown key"], id="unknown-in-cell"),
    pytest.param(set_("data", "n_train", "2000"), ["data.n_train", "valid integer", "'2000'"],
                 id="string-for-int"),
    pytest.param(set_("protocol", "batch_size", 32.0), ["protocol.batch_size", "valid integer", "32.0"],
                 id="float-for-int"),
    pytest.param(set_("protocol", "patience", True), ["protocol.patience", "valid integer", "True"],
                 id="bool-for-int"),
    pytest.param(set_("protocol", "batch_size", [32]), ["protocol.batch_size", "valid integer", "[32]"],
                 id="list-for-int"),
    pytest.param(set_("seeds", None, 0), ["seeds", "valid list", "got 0"], id="scalar-for-list"),
    pytest.param(set_("seeds", None, [0, 1.5]), ["seeds.1", "valid integer", "1.5"], id="float-seed"),
    pytest.param(set_("protocol", "lr", "0.001"), ["protocol.lr", "valid number", "'0.001'"],
                 id="string-for-float"),
    pytest.param(set_("protocol", "lr", True), ["protocol.lr", "valid number"], id="bool-for-float"),
    pytest.param(set_("protocol", "device", "gpu"), ["protocol.device", "'auto', 'cpu' or 'cuda'", "'gpu'"],
                 id="unknown-device"),
    pytest.param(cell(BSC, task="ordinal"),
                 [f"cells.{BSC}.task", "'regression', 'probability', 'binary', 'multiclass' or 'multilabel'",
                  "'ordinal'"], id="unknown-task"),
    pytest.param(cell(BSC, activation="tanh"),
                 [f"cells.{BSC}.activation", "'none', 'relu', 'sigmoid' or 'softmax'", "'tanh'"],
                 id="unknown-activation"),
    pytest.param(cell(BSC, loss="hinge"),
                 [f"cells.{BSC}.loss", "'mse', 'mae', 'rmse', 'bce', 'bcelogits' or 'ce'", "'hinge'"],
                 id="unknown-loss"),
    pytest.param(cell(RNM, variant="log"), [f"cells.{RNM}.variant", "'zscore' or 'raw'", "'log'"],
                 id="unknown-variant"),
    pytest.param(cell(BSC, loss_input="probabilities"),
                 [f"cells.{BSC}.loss_input", "'output' or 'logits'", "'probabilities'"], id="unknown-loss_input"),
    pytest.param(cell(BSC, loss="mse"), [f"cells.{BSC}:", "disagrees with its fields", "'binary-softmax-mse'"],
                 id="cell-id-disagrees-loss"),
    pytest.param(cell("multiclass-logits-ce", loss_input="output"),
                 ["cells.multiclass-logits-ce:", "disagrees", "'multiclass-softmax-ce'"],
                 id="cell-id-disagrees-loss_input"),
    pytest.param(cell("regression-none-mse-raw", variant="zscore"),
                 ["cells.regression-none-mse-raw:", "disagrees", f"'{RNM}'"], id="cell-id-disagrees-variant"),
    pytest.param(cell(BSC, outputs=3), [f"cells.{BSC}:", "outputs=3", "impossible", "'binary'", "2 output(s)"],
                 id="outputs-impossible-binary"),
    pytest.param(cell(RNM, outputs=10), [f"cells.{RNM}:", "outputs=10", "impossible", "1 output(s)"],
                 id="outputs-impossible-regression"),
    pytest.param(cell(BSC, outputs=0), [f"cells.{BSC}.outputs", "greater than 0"], id="outputs-zero"),
    pytest.param(cell(RNM, variant=None), [f"cells.{RNM}:", "variant (zscore or raw) is required for regression"],
                 id="variant-missing-on-regression"),
    pytest.param(cell(BSC, variant="raw"), [f"cells.{BSC}:", "variant", "not allowed for binary cells"],
                 id="variant-on-classification"),
    pytest.param(cell(RNM, loss_input="logits"),
                 [f"cells.{RNM}:", "loss_input 'logits'", "(sigmoid or softmax)", "got 'none'"],
                 id="logits-with-activation-none"),
    pytest.param(cell("regression-relu-mse-raw", loss_input="logits"),
                 ["cells.regression-relu-mse-raw:", "loss_input 'logits'", "got 'relu'"],
                 id="logits-with-activation-relu"),
    pytest.param(set_("protocol", "patience", 0), ["protocol.patience", "greater than 0", "got 0"], id="patience-0"),
    pytest.param(set_("protocol", "patience", -3), ["protocol.patience", "greater than 0", "got -3"],
                 id="patience-negative"),
    pytest.param(set_("protocol", "batch_size", 0), ["protocol.batch_size", "greater than 0"], id="batch_size-0"),
    pytest.param(set_("protocol", "batch_size", -32), ["protocol.batch_size", "greater than 0", "got -32"],
                 id="batch_size-negative"),
    pytest.param(set_("protocol", "lr", 0.0), ["protocol.lr", "greater than 0", "got 0.0"], id="lr-0"),
    pytest.param(set_("protocol", "lr", -0.001), ["protocol.lr", "greater than 0", "got -0.001"], id="lr-negative"),
    pytest.param(set_("protocol", "max_epochs", 0), ["protocol.max_epochs", "greater than 0"], id="max_epochs-0"),
    pytest.param(set_("protocol", "weight_decay", -0.01), ["protocol.weight_decay", "greater than or equal to 0"],
                 id="weight_decay-negative"),
    pytest.param(set_("seeds", None, []), ["seeds", "at least 1 item"], id="empty-seeds"),
    pytest.param(set_("seeds", None, [0, 1, 0]), ["seeds must be distinct", "[0, 1, 0]"], id="duplicate-seeds"),
    pytest.param(set_("seeds", None, [0, -1]), ["seeds.1", "greater than or equal to 0"], id="negative-seed"),
    pytest.param(set_("data", "n_train", 58_000),
                 ["data:", "n_train + n_valid = 61000", "exceeds the 60000 MNIST training images"],
                 id="split-exceeds-60000"),
    pytest.param(set_("data", "n_valid", 60_000), ["data:", "n_train + n_valid = 62000", "60000"],
                 id="valid-alone-exceeds-60000"),
    pytest.param(set_("data", "n_test", 10_001), ["data.n_test", "less than or equal to 10000", "got 10001"],
                 id="n_test-above-10000"),
    pytest.param(set_("data", "n_valid", 0), ["data.n_valid", "greater than 0"], id="n_valid-0"),
    pytest.param(set_("cells", None, {}), ["cells", "at least 1 item"], id="no-cells"),
    pytest.param(set_("cells", None, [BASE["cells"][BSC]]), ["cells", "valid dictionary"], id="cells-as-list"),
    pytest.param(set_("tracking", "experiment", ""), ["tracking.experiment", "at least 1 character"],
                 id="empty-experiment-name"),
]


@pytest.mark.parametrize(("change", "fragments"), MALFORMED)
def test_malformed_params_are_refused(tmp_path, change, fragments):
    message = refusal(write(tmp_path, mutated(change)))
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


def test_variant_message_does_not_contradict_itself(tmp_path):
    # a regression cell without a variant must not be told variants are "not allowed for regression cells"
    message = refusal(write(tmp_path, mutated(cell(RNM, variant=None))))
    assert "not allowed for regression" not in message, message


def test_every_problem_in_a_file_is_listed(tmp_path):
    # one run of the stage shows all the fixes to make, not one per attempt
    params = mutated(lambda p: (p["protocol"].update(patience=0, batch_size="32"), p["data"].pop("n_train")))
    message = refusal(write(tmp_path, params))
    for fragment in ("protocol.patience", "protocol.batch_size", "data.n_train: missing"):
        assert fragment in message, message


def duplicate_cell(text: str) -> str:
    return text.replace("  binary-softmax-bce:\n", "  binary-softmax-ce:\n")


def duplicate_field(text: str) -> str:
    return text.replace("  n_valid: 3000", "  n_valid: 3000\n  n_train: 10")


def test_duplicate_cell_id_is_refused_with_its_line(tmp_path):
    text = duplicate_cell(SOURCE)
    assert text != SOURCE
    path = tmp_path / "params.yaml"
    path.write_text(text)
    message = refusal(path)
    assert "duplicate key 'binary-softmax-ce'" in message
    assert f"line {line_of(text, '  binary-softmax-ce:', 2)}" in message


def test_duplicate_nested_key_is_refused_not_last_one_wins(tmp_path):
    text = duplicate_field(SOURCE)
    assert text != SOURCE
    path = tmp_path / "params.yaml"
    path.write_text(text)
    message = refusal(path)
    assert "duplicate key 'n_train'" in message
    assert f"line {line_of(text, '  n_train: 10', 1)}" in message


TEXT_CASES = [
    pytest.param(lambda s: s.replace("seeds: [0, 1, 2, 3, 4]", "seeds: [0, 1, 2"),
                 ["not valid YAML", "flow sequence", f"line {line_of(SOURCE, 'seeds: [0, 1, 2, 3, 4]', 1)}"], id="unclosed-bracket"),
    pytest.param(lambda s: s.replace("  batch_size: 32", "batch_size: 32"),
                 ["not valid YAML", "mapping values are not allowed"], id="bad-indentation"),
    pytest.param(lambda s: s.replace("  lr: 0.001 ", "  lr: 0.001: 2 "),
                 ["not valid YAML", "mapping values are not allowed"], id="colon-in-value"),
    pytest.param(lambda s: "- data\n- protocol\n", ["expected a mapping at the top level", "got list"],
                 id="top-level-list"),
    pytest.param(lambda s: "params\n", ["expected a mapping at the top level", "got str"], id="top-level-scalar"),
    pytest.param(lambda s: "", ["the file is empty", "expected the sections"], id="empty-file"),
    pytest.param(lambda s: "# nothing here\n", ["the file is empty"], id="comments-only"),
]


@pytest.mark.parametrize(("edit", "fragments"), TEXT_CASES)
def test_unparseable_files_are_refused(tmp_path, edit, fragments):
    text = edit(SOURCE)
    assert text != SOURCE
    path = tmp_path / "params.yaml"
    path.write_text(text)
    message = refusal(path)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"


def test_missing_params_file(tmp_path):
    path = tmp_path / "nowhere" / "params.yaml"
    message = refusal(path)
    assert "cannot read the parameters file" in message and "No such file" in message


def test_params_path_is_a_directory(tmp_path):
    message = refusal(tmp_path)
    assert "cannot read the parameters file" in message


def test_broken_params_stop_the_split_stage_before_it_writes(tmp_path):
    # split evaluates load_params() before write_split touches data/raw, so no data is needed
    params = mutated(set_("data", "n_train", "2000"))
    project = make_project(tmp_path / "project", params)
    done = subprocess.run([sys.executable, "stages/split.py"], cwd=project, env=base_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: params.yaml: invalid configuration"), done.stderr
    assert "data.n_train" in done.stderr and "valid integer" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (project / "data" / "split").exists()
    assert not (project / "data").exists() or not any((project / "data").glob(".split.*"))


@pytest.mark.parametrize("field, value", [("lr", float("inf")), ("weight_decay", float("inf")),
                                          ("normalize_mean", float("nan")), ("normalize_std", float("inf"))])
def test_non_finite_numbers_are_refused(tmp_path, field, value):
    message = refusal(write(tmp_path, mutated(set_("protocol", field, value))))
    assert f"protocol.{field}" in message and "finite number" in message


def test_a_number_yaml_reads_as_text_gets_a_hint(tmp_path):
    text = (REPO / "params.yaml").read_text().replace("lr: 0.001", "lr: 1e-3")
    path = tmp_path / "params.yaml"
    path.write_text(text)
    message = refusal(path)
    assert "protocol.lr" in message and "1.0e-3" in message


def test_misfit_run_and_predict_read_params_through_the_validated_reader(tmp_path):
    """The commands outside the stages refuse a broken params.yaml as the stages do, naming
    the file and the field, before a cluster or a model store is touched."""
    from misfit.run.predict import PredictError, model_uri
    from misfit.run.preflight import EngineError, project_params

    params = copy.deepcopy(BASE)
    params["tracking"]["experiment"] = ""
    path = write(tmp_path, params)
    for read, error in ((project_params, EngineError), (lambda root: model_uri("a-cell", root), PredictError)):
        with pytest.raises(error) as caught:
            read(tmp_path)
        assert str(caught.value).startswith(f"{path}:") and "tracking.experiment" in str(caught.value)
    assert list(project_params(REPO).cells) == list(BASE["cells"])

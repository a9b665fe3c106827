"""The handler's settings schema (runtime/handler_settings.py): a misspelt key is refused when an
archive is packed and when a worker starts, values are converted to their types, the defaults are the
handler's old ones; and the records store's URL has one resolver with one precedence."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import yaml

from runtime.artifacts import Artifact
from runtime.handler_settings import HandlerSettings, SettingsError, checked_section

ROOT = Path(__file__).resolve().parents[1]


# --- refused where it is written and where it is read ---------------------------------------------


def test_a_misspelt_key_is_refused_at_worker_start_naming_the_nearest_key(tmp_path):
    from handler.deepfake_handler import DeepfakeHandler

    class Context:  # all initialize reads before the settings stop it
        system_properties = {"model_dir": str(tmp_path), "gpu_id": None}
        model_yaml_config = {"handler": {"backend": "eager", "max_face": 3}}

    with pytest.raises(SettingsError) as refused:
        DeepfakeHandler._load_settings(Context())
    message = str(refused.value)
    assert "'max_face'" in message and "did you mean 'max_faces'?" in message and "\n" not in message
    with pytest.raises(SettingsError, match="did you mean 'max_faces'"):
        DeepfakeHandler().initialize(Context())  # the first step: no model file is looked at
    with pytest.raises(SettingsError, match="did you mean 'provenance_budget_ms'"):
        HandlerSettings.from_model_config({"handler": {"provenance_budget": 100}})


def test_a_misspelt_key_is_refused_at_pack_time(tmp_path):
    from export.pack import pack

    artifact = Artifact("eager", "fp32", "model.safetensors", "cpu", 224, 1, 8, 0.0, 0)
    logged = []
    with pytest.raises(SettingsError, match="unknown setting 'video_frame'; did you mean 'video_frames'"):
        pack([artifact], tmp_path, ROOT / "weights/default.safetensors", tmp_path / "store", log=logged.append,
             handler={"threads": 1, "video_frame": 8})  # fmt: skip
    assert not (tmp_path / "store").exists() and not logged  # refused before anything was built


def test_the_archive_builders_refuse_a_misspelt_key(tmp_path):
    from export.archive import ServingConfig, repack

    with pytest.raises(SettingsError, match="did you mean 'threads'"):
        ServingConfig(handler={"thread": 2})
    # an archive's model-config, repacked with a typo: refused before the copy is written
    source = tmp_path / "small.mar"
    with zipfile.ZipFile(source, "w") as archive:
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"configFile": "model-config.yaml"}}))
        archive.writestr("model-config.yaml", yaml.safe_dump({"batchSize": 4, "handler": {"backend": "eager"}}))
    with pytest.raises(SettingsError, match="did you mean 'records_url'"):
        repack(source, tmp_path / "typo.mar", handler={"record_url": "off"})
    assert not (tmp_path / "typo.mar").exists()
    copy = repack(source, tmp_path / "ok.mar", handler={"threads": "2", "provenance": "off"})
    with zipfile.ZipFile(copy) as archive:
        written = yaml.safe_load(archive.read("model-config.yaml"))["handler"]
    assert written == {"backend": "eager", "threads": 2, "provenance": False}


def test_the_packed_section_is_what_the_worker_reads():
    from export.archive import ServingConfig

    text = ServingConfig(batch_range=(1, 16), handler={"threads": 2, "max_video_seconds": "1.5"}).to_yaml("onnx", "fp32", "model.onnx")
    section = yaml.safe_load(text)["handler"]
    assert section == {"backend": "onnx", "precision": "fp32", "artifact": "model.onnx", "min_batch": 1, "max_batch": 16,
                       "threads": 2, "max_video_seconds": 1.5}  # fmt: skip
    settings = HandlerSettings.from_model_config(yaml.safe_load(text))
    assert (settings.backend, settings.max_batch, settings.threads, settings.max_video_seconds) == ("onnx", 16, 2, 1.5)


# --- types and defaults ---------------------------------------------------------------------------


def test_values_are_converted_to_their_types():
    settings = HandlerSettings.from_mapping({"threads": "4", "max_pixels": 1e6, "max_video_seconds": 3, "provenance": "off",
                                             "records_spool_mb": "8", "c2pa_trust_list": 123, "max_batch": None})  # fmt: skip
    assert settings.threads == 4 and settings.max_pixels == 1_000_000 and settings.max_video_seconds == 3.0
    assert settings.provenance is False and settings.records_spool_mb == 8.0 and settings.c2pa_trust_list == "123"
    assert settings.max_batch is None  # null keeps the default
    assert HandlerSettings.from_mapping({"provenance": "yes"}).provenance is True
    assert checked_section({"threads": 2.0, "records_url": None}) == {"threads": 2}


@pytest.mark.parametrize(
    "section, says",
    [
        ({"threads": "two"}, "threads must be an integer, got 'two'"),
        ({"max_faces": 2.5}, "max_faces must be an integer"),
        ({"min_side": True}, "min_side must be an integer"),
        ({"max_video_seconds": "long"}, "max_video_seconds must be a number"),
        ({"provenance": "maybe"}, "provenance must be true or false"),
        ({"records_url": False}, "quote it in YAML: 'off'"),
        ({"precision": ["fp16"]}, "precision must be a string"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_in_one_line(section, says):
    with pytest.raises(SettingsError, match=says) as refused:
        HandlerSettings.from_model_config({"handler": section})
    assert "\n" not in str(refused.value) and "handler section" in str(refused.value)


def test_the_defaults_are_the_handlers_old_ones():
    from runtime.decoding import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE
    from runtime.video import DEFAULT_FRAMES, DEFAULT_MAX_BYTES, DEFAULT_MAX_SECONDS

    defaults = HandlerSettings()
    assert HandlerSettings.from_model_config({}) == HandlerSettings.from_model_config({"handler": None}) == defaults
    assert (defaults.backend, defaults.precision, defaults.artifact, defaults.threads) == (None, "fp32", None, 1)
    assert (defaults.min_batch, defaults.max_batch, defaults.max_faces, defaults.max_crops_per_pass) == (1, None, 5, 64)
    assert (defaults.max_pixels, defaults.min_side, defaults.max_image_bytes) == (DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, DEFAULT_MAX_IMAGE_BYTES)
    assert (defaults.video_frames, defaults.max_video_seconds, defaults.max_video_bytes) == (DEFAULT_FRAMES, DEFAULT_MAX_SECONDS, DEFAULT_MAX_BYTES)
    assert (defaults.provenance, defaults.provenance_budget_ms, defaults.c2pa_trust_anchors, defaults.c2pa_trust_list) == (True, 500.0, None, None)
    assert defaults.records_config() == {}  # the records settings come from the environment unless the archive says


def test_provenance_and_records_read_the_typed_settings(tmp_path):
    from handler.provenance import ProvenanceReader

    assert ProvenanceReader.from_settings(HandlerSettings(provenance=False), tmp_path) is None
    assert ProvenanceReader.from_settings(HandlerSettings(provenance_budget_ms=250), tmp_path).budget_s == 0.25
    with pytest.raises(SettingsError, match="did you mean 'c2pa_trust_list'"):
        ProvenanceReader.from_config({"c2pa_trustlist": "x"}, tmp_path)
    settings = HandlerSettings.from_mapping({"records_url": "off", "records_spool_mb": 2, "threads": 1})
    assert settings.records_config() == {"records_url": "off", "records_spool_mb": 2.0}


# --- the records store's URL: one resolver --------------------------------------------------------


def test_the_records_url_has_one_precedence(tmp_path):
    from handler import records_settings

    archive, env, props = ({"records_url": "sqlite:///archive.db"}, {"DEEPFAKE_RECORDS_URL": "sqlite:///env.db"},
                           {"deepfake_records_url": "sqlite:///props.db"})  # fmt: skip
    default = f"sqlite:///{tmp_path.resolve() / records_settings.STORE_FILE}"
    assert records_settings.records_url(env, props, tmp_path, archive) == "sqlite:///archive.db"  # the archive's setting (workers)
    assert records_settings.records_url(env, props, tmp_path) == "sqlite:///env.db"  # the environment beats config.properties
    assert records_settings.records_url({}, props, tmp_path) == "sqlite:///props.db"  # config.properties beats the default
    assert records_settings.records_url({}, {}, tmp_path) == default
    assert records_settings.records_url({}, {}) is None  # no run folder, nothing set: nowhere
    assert records_settings.records_url({"DEEPFAKE_RECORDS_URL": "off"}, props, tmp_path) is None
    assert records_settings.records_url({"DEEPFAKE_RECORDS_URL": "  "}, props, tmp_path) == "sqlite:///props.db"  # blank is unset
    # the settings the workers, the server, the page and the CLI use go through it
    assert records_settings.RecordsSettings.resolve(env, props, tmp_path).url == "sqlite:///env.db"
    assert records_settings.RecordsSettings.resolve({}, {}, tmp_path, archive).url == "sqlite:///archive.db"


def test_the_server_and_the_cli_resolve_a_run_folder_through_it(tmp_path):
    from handler import records_settings
    from handler.server import run_records_settings

    (tmp_path / "config.properties").write_text("deepfake_records_url=sqlite:///props.db\n")
    assert run_records_settings(tmp_path, {}).url == "sqlite:///props.db"
    assert run_records_settings(tmp_path, {"DEEPFAKE_RECORDS_URL": "sqlite:///env.db"}).url == "sqlite:///env.db"
    (tmp_path / "config.properties").unlink()
    assert run_records_settings(tmp_path, {}).url == f"sqlite:///{tmp_path.resolve() / records_settings.STORE_FILE}"


def test_the_archived_records_module_imports_nothing_host_only():
    import ast

    for module in ("handler/records.py", "handler/records_settings.py", "handler/records_store.py", "handler/records_query.py",
                   "runtime/handler_settings.py"):
        tree = ast.parse((ROOT / module).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "handler.tsconfig" not in imported, module
    settings_imports = {n.module for n in ast.walk(ast.parse((ROOT / "runtime/handler_settings.py").read_text()))
                        if isinstance(n, ast.ImportFrom) and n.module}  # fmt: skip
    assert all(m.startswith("runtime.") or m in ("__future__", "dataclasses", "typing") for m in settings_imports)

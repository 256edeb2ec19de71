"""Model sources, weights loading and the checkpoint format (embeval.extract.models,
.architectures, .checkpoint)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from helpers.models import TinyNet, tiny_net
from safetensors.torch import save_file

from embeval.cli import flag_message
from embeval.errors import InputFileError, OptionError
from embeval.extract.architectures import SmallNet, build_backbone
from embeval.extract.checkpoint import read_checkpoint, save_checkpoint
from embeval.extract.images import Preprocessing
from embeval.extract.models import load_model

X = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
ARCH = {"backbone": "embeval-small", "embedding_dim": 8, "widths": [4, 8], "num_classes": 3}
PREP = Preprocessing(size=(16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def _trained_small() -> SmallNet:
    model = build_backbone(ARCH)
    with torch.no_grad():  # non-trivial BN statistics, so that a lost buffer shows
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model.eval()


def _out(loaded_or_module, x=X):
    module = getattr(loaded_or_module, "module", loaded_or_module)
    with torch.inference_mode():
        return module(x)


def test_builtin_name_is_deterministic_and_returns_embeddings():
    a, b = load_model("embeval-small"), load_model("embeval-small")
    assert a.preprocessing is not None and a.name == "embeval-small"
    assert _out(a).shape == (3, 128)
    assert torch.equal(_out(a), _out(b)) and a.fingerprint == b.fingerprint


def test_checkpoint_round_trip(tmp_path):
    model = _trained_small()
    path = save_checkpoint(tmp_path / "ckpt.safetensors", model, architecture=ARCH,
                           preprocessing=PREP, extra_metadata={"epoch": 7})
    ckpt = read_checkpoint(path)
    assert ckpt.architecture == ARCH and ckpt.metadata["epoch"] == "7"
    assert ckpt.metadata["embeval.checkpoint"] == "1"
    assert "classifier.weight" in ckpt.state_dict  # the training head travels along
    loaded = load_model(str(path))
    assert loaded.preprocessing == PREP
    assert _out(loaded).shape == (3, 8)  # the embedding, not the 3 logits
    torch.testing.assert_close(_out(loaded), _out(model), rtol=0, atol=0)


def test_save_checkpoint_refuses_a_wrong_architecture(tmp_path):
    with pytest.raises(ValueError, match="does not describe this model"):
        save_checkpoint(tmp_path / "c.safetensors", _trained_small(),
                        architecture={**ARCH, "widths": [4, 8, 16]}, preprocessing=PREP)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_with_wrong_keys_lists_them(tmp_path):
    state = _trained_small().state_dict()
    state["extra.weight"] = state.pop("embedding.weight")
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={
        "embeval.checkpoint": "1", "architecture": json.dumps(ARCH),
        "preprocessing": json.dumps(PREP.to_dict())})
    with pytest.raises(InputFileError, match="missing keys: embedding.weight; "
                                             "unexpected keys: extra.weight") as info:
        load_model(str(path))
    assert info.value.path == str(path)


@pytest.mark.parametrize("content, message", [
    (None, "not an embeval checkpoint"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{trunc", "not a readable safetensors file"),
    (b"hello world, not a model", "not a model file"),
])
def test_files_that_are_not_models(tmp_path, content, message):
    path = tmp_path / "m.safetensors"
    if content is None:
        save_file({"w": torch.zeros(2)}, str(path))
    else:
        path.write_bytes(content)
    with pytest.raises(InputFileError, match=message):
        load_model(str(path))


def test_torchscript_file(tmp_path):
    model = tiny_net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(model, X).save(str(tmp_path / "m.ts"))
    loaded = load_model(str(tmp_path / "m.ts"))
    assert loaded.preprocessing is None
    torch.testing.assert_close(_out(loaded), _out(model))


@pytest.mark.slow
def test_torch_export_archive_with_its_input_size(tmp_path):
    model = tiny_net()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model, (X[:2],), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    loaded = load_model(str(tmp_path / "m.pt2"))
    assert loaded.preprocessing is not None and loaded.preprocessing.size == (16, 16)
    torch.testing.assert_close(_out(loaded), _out(model))


def test_module_callable_with_weights_and_prefixes(tmp_path):
    trained = TinyNet().eval()  # other weights than the factory's seed
    torch.save({"state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}},
               tmp_path / "w.pt")
    save_file(dict(trained.state_dict()), str(tmp_path / "w.safetensors"))
    for weights in ("w.pt", "w.safetensors"):
        loaded = load_model("helpers.models:tiny_net", weights=tmp_path / weights)
        torch.testing.assert_close(_out(loaded), _out(trained), rtol=0, atol=0)
    assert not torch.equal(_out(load_model("helpers.models:tiny_net")), _out(trained))


def test_weights_that_do_not_match_list_missing_and_unexpected_keys(tmp_path):
    state = TinyNet().state_dict()
    state["fc.extra"] = state.pop("fc.bias")
    state["features.0.weight"] = torch.zeros(5, 3, 3, 3)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(InputFileError, match=r"w\.pt: weights do not match the model; missing "
                                             r"keys: fc\.bias; unexpected keys: fc\.extra; "
                                             r"shape mismatch: features\.0\.weight \[5, 3, 3, 3\]"):
        load_model("helpers.models:tiny_net", weights=tmp_path / "w.pt")


class Payload:
    """An arbitrary picklable object: loading it must never run its unpickling."""


def test_weights_never_unpickle_arbitrary_objects(tmp_path):
    torch.save({"fc.weight": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(InputFileError, match="weights_only=True"):
        load_model("helpers.models:tiny_net", weights=tmp_path / "evil.pt")


def test_a_state_dict_given_as_model_gets_a_hint(tmp_path):
    torch.save(tiny_net().state_dict(), tmp_path / "sd.pt")
    with pytest.raises(InputFileError, match="this file as weights$") as e:
        load_model(str(tmp_path / "sd.pt"))
    assert flag_message(e.value).endswith("this file as --weights")


def test_layer_takes_an_inner_output():
    model = tiny_net()
    loaded = load_model("helpers.models:tiny_net", layer="pool")
    torch.testing.assert_close(_out(loaded), torch.flatten(model.pool(model.features(X)), 1))


def test_head_identity_drops_the_classifier():
    model = tiny_net()
    loaded = load_model("helpers.models:tiny_net", head="identity")
    torch.testing.assert_close(_out(loaded), torch.flatten(model.pool(model.features(X)), 1))
    assert _out(load_model("embeval-small", head="identity")).shape == (3, 128)


@pytest.mark.parametrize("spec, kwargs, error, message", [
    ("no_such_file.pt", {}, InputFileError, "no such model file"),
    ("nope_not_a_module:f", {}, OptionError, "cannot import 'nope_not_a_module'"),
    ("helpers.models:missing", {}, OptionError, "has no attribute 'missing'"),
    ("helpers.models:not_a_module", {}, OptionError, "returned a int"),
    ("helpers.models:tiny_net", {"layer": "nope"}, OptionError, "top level: features, pool, fc"),
    ("helpers.models:tiny_net", {"head": "mlp"}, OptionError, "only 'identity'"),
    ("helpers.models:tiny_net", {"head": "identity", "layer": "fc"}, OptionError, "together"),
    ("helpers.models:tiny_net", {"weights": "missing.pt"}, InputFileError, "no such file"),
])
def test_bad_model_specs(spec, kwargs, error, message):
    with pytest.raises(error, match=message):
        load_model(spec, **kwargs)


def test_layer_on_a_compiled_archive_is_refused(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(tiny_net(), X).save(str(tmp_path / "m.ts"))
    with pytest.raises(OptionError, match="compiled archive"):
        load_model(str(tmp_path / "m.ts"), layer="fc")

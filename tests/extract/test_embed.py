"""The in-process path: embeval.embed / embeval.evaluate_model over DataLoaders of images."""

from __future__ import annotations

import pytest
import torch
from helpers.images import image_folder
from helpers.models import TinyNet, tiny_net
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import embeval
from embeval.errors import OptionError
from embeval.extract import ExtractOptions, embed_images, extract_to_files
from embeval.extract.images import Preprocessing, list_images, load_image
from embeval.extract.models import LoadedModel

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

PREP = Preprocessing(size=(8, 8))


def random_set(n: int, seed: int, *, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 6, 5, generator=g), torch.randint(0, classes, (n,), generator=g)


def loader(images: torch.Tensor, labels: torch.Tensor, *extra: torch.Tensor,
           batch_size: int = 4) -> DataLoader:
    return DataLoader(TensorDataset(images, labels, *extra), batch_size=batch_size)


def by_hand(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(images)


# ---------------------------------------------------------------- embed


@pytest.mark.slow
def test_embed_equals_the_model_run_by_hand():
    model = tiny_net()
    images, labels = random_set(11, 0)
    s = embeval.embed(model, loader(images, labels), device="cpu")
    assert (s.n, s.dim) == (11, 6) and s.cameras is None
    emb = s.rows(0, s.n)
    assert emb.dtype == torch.float32 and emb.device.type == "cpu"
    assert not emb.requires_grad and not emb.is_inference()  # usable in the user's own code
    torch.testing.assert_close(emb, by_hand(model, images), rtol=0, atol=1e-6)
    assert torch.equal(s.labels, labels)


def test_embed_takes_cameras_and_plain_sequences_of_ints():
    model = tiny_net()
    images, labels = random_set(5, 1)
    batches = [(images[:3], [0, 1, 1], (2, 2, 7)), (images[3:], [5, 0], [1, 1])]
    s = embeval.embed(model, batches, device="cpu")
    assert s.labels.tolist() == [0, 1, 1, 5, 0]
    assert s.cameras is not None and s.cameras.tolist() == [2, 2, 7, 1, 1]
    torch.testing.assert_close(s.rows(0, 5), by_hand(model, images), rtol=0, atol=1e-6)


def test_embed_fn_replaces_the_forward():
    model = tiny_net()
    images, labels = random_set(9, 2)

    def pooled_flip_mean(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        f = m.pool(m.features(x)).flatten(1)
        return (f + m.pool(m.features(torch.flip(x, dims=[3]))).flatten(1)) / 2

    s = embeval.embed(model, loader(images, labels), device="cpu", embed_fn=pooled_flip_mean)
    assert s.dim == 4  # the pooled feature, not fc's 6 outputs
    with torch.no_grad():
        expected = pooled_flip_mean(model, images)
    torch.testing.assert_close(s.rows(0, s.n), expected, rtol=0, atol=1e-6)


def test_every_submodules_mode_is_restored_and_the_forward_runs_in_eval_mode():
    model = TinyNet().train()
    model.features[1].eval()  # a frozen BatchNorm inside a training model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    images, labels = random_set(8, 3)
    s = embeval.embed(model, loader(images, labels), device="cpu")
    assert [m.training for m in model.modules()] == modes
    for k, v in model.state_dict().items():  # eval mode: BatchNorm statistics untouched
        assert torch.equal(v, before[k]), k
    model.eval()
    torch.testing.assert_close(s.rows(0, s.n), by_hand(model, images), rtol=0, atol=1e-6)


def test_modes_are_restored_after_a_failure_too():
    model = TinyNet().train()
    with pytest.raises(OptionError):
        embeval.embed(model, [(torch.randn(2, 5), [0, 1])], device="cpu")  # conv refuses 2-D
    assert all(m.training for m in model.modules())


class Constant(nn.Module):
    """Returns ``out(batch_index, x)``; counts its calls."""

    def __init__(self, out) -> None:  # noqa: ANN001
        super().__init__()
        self.out, self.calls = out, 0

    def forward(self, x: torch.Tensor):  # noqa: ANN201
        self.calls += 1
        return self.out(self.calls - 1, x)


def nan_in_batch_2(i: int, x: torch.Tensor) -> torch.Tensor:
    y = torch.ones(len(x), 3)
    if i == 2:
        y[1, 0] = float("nan")
    return y


@pytest.mark.parametrize(("model", "batches", "message"), [
    (tiny_net(), [torch.randn(2, 3, 4, 4)], "loader: batch 0 is a Tensor, not (images, labels)"),
    (tiny_net(), [(torch.randn(2, 3, 4, 4), [0, 1], [0, 0], [1, 1])],
     "loader: batch 0 is a tuple of 4, not (images, labels)"),
    (tiny_net(), [("a.png", [0])], "loader: batch 0 is a tuple of 2, not (images, labels)"),
    (tiny_net(), [(torch.randn(2, 3, 4, 4), [0, 1]), (torch.randn(2, 3, 4, 4), [0])],
     "loader: batch 1: labels must be 2 integers"),
    (tiny_net(), [(torch.randn(2, 3, 4, 4), torch.tensor([0.5, 1.0]))],
     "loader: batch 0: labels must be 2 integers"),
    (tiny_net(), [(torch.randn(2, 3, 4, 4), [0, 1], [0, 0]), (torch.randn(2, 3, 4, 4), [0, 1])],
     "loader: batch 1 has no cameras, unlike batch 0"),
    (tiny_net(), [], "loader: yielded no batch"),
    (Constant(lambda i, x: torch.ones(len(x))), [(torch.randn(2, 3), [0, 1])],
     "model: output [2] in batch 0 is not an embedding batch [2, D]"),
    (Constant(lambda i, x: torch.ones(len(x) + 1, 3)), [(torch.randn(2, 3), [0, 1])],
     "model: output [3, 3] in batch 0 is not an embedding batch [2, D]"),
    (Constant(lambda i, x: "features"), [(torch.randn(2, 3), [0, 1])],
     "model: output str in batch 0 is not an embedding batch [2, D]"),
    (Constant(lambda i, x: torch.ones(len(x), 3, dtype=torch.int64)), [(torch.randn(2, 3), [0, 1])],
     "model: output in batch 0 has dtype torch.int64, not a float embedding batch"),
    (Constant(nan_in_batch_2), [(torch.randn(2, 3), [0, 1])] * 4,
     "model: output row 1 in batch 2 contains NaN or Inf"),
    (Constant(lambda i, x: torch.ones(len(x), 3 + i)), [(torch.randn(2, 3), [0, 1])] * 2,
     "model: embedding sizes differ between batches ([3, 4])"),
    (tiny_net(), [(torch.randn(2, 7), [0, 1])], "model: forward failed on a batch of shape [2, 7] "
                                                "in batch 0 (RuntimeError"),
])
def test_errors_users_can_act_on_are_one_line(model, batches, message):  # noqa: ANN001
    with pytest.raises(OptionError) as e:
        embeval.embed(model, batches, device="cpu")
    assert message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_embed_fn_output_errors_name_embed_fn():
    with pytest.raises(OptionError, match=r"^embed_fn: output \[2\] in batch 0"):
        embeval.embed(tiny_net(), [(torch.randn(2, 3, 4, 4), [0, 1])], device="cpu",
                      embed_fn=lambda m, x: m(x)[:, 0])


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(precision="fp64"), "precision: unknown precision 'fp64'"),
    (dict(device="tpu"), "device: unknown device 'tpu'"),
    (dict(embed_fn=3), "embed_fn: expected a callable"),
])
def test_bad_arguments_name_the_parameter(kwargs, message):  # noqa: ANN001
    with pytest.raises(OptionError) as e:
        embeval.embed(tiny_net(), [(torch.randn(2, 3, 4, 4), [0, 1])], **kwargs)
    assert str(e.value).startswith(message), str(e.value)


def test_not_a_module_is_refused():
    with pytest.raises(OptionError, match="model: expected a torch.nn.Module, got function"):
        embeval.embed(lambda x: x, [(torch.randn(2, 3), [0, 1])])  # type: ignore[arg-type]


# ---------------------------------------------------------------- evaluate_model


@pytest.mark.slow
@pytest.mark.parametrize("options", [
    dict(ks=(1, 2)),
    dict(ks=(1, 3), knn_k=3, pr=True, metric="euclid"),
    dict(exclude_same_camera=True, no_positive="zero"),
    dict(aggregate="mean", ks=(1,)),
])
def test_evaluate_model_equals_evaluate_of_the_embedded_sets(options):  # noqa: ANN001
    model = tiny_net()
    qi, ql = random_set(7, 4)
    gi, gl = random_set(13, 5)
    qc, gc = torch.arange(7) % 2, torch.arange(13) % 3
    got = embeval.evaluate_model(model, loader(qi, ql, qc), loader(gi, gl, gc, batch_size=5),
                                 device="cpu", **options)
    q = embeval.embed(model, loader(qi, ql, qc), device="cpu")
    g = embeval.embed(model, loader(gi, gl, gc, batch_size=5), device="cpu")
    want = embeval.evaluate(q, g, device="cpu", **options)
    assert got.metrics == want.metrics
    assert got.options == want.options
    assert (got.n_query, got.n_gallery) == (7, 13 if "aggregate" not in options else 3)


def test_evaluate_model_passes_evaluate_errors_through():
    model = tiny_net()
    qi, ql = random_set(3, 6)
    with pytest.raises(OptionError, match="no_positive|no-positive"):
        embeval.evaluate_model(model, loader(qi, ql), loader(qi, ql), device="cpu",
                               no_positive="maybe")


# ---------------------------------------------------------------- same as embeval extract


class Folder(Dataset):
    """The images of an ``ImageList`` preprocessed as ``embeval extract`` does, with labels."""

    def __init__(self, images, prep: Preprocessing) -> None:  # noqa: ANN001
        self.images, self.prep = images, prep

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.prep(load_image(self.images.files[i])), self.images.labels[i]


def test_extract_and_embed_give_the_same_embeddings_and_metrics(tmp_path):
    query = list_images(image_folder(tmp_path / "q", {"a": 3, "b": 4, "c": 2}, size=(9, 13)))
    gallery = list_images(image_folder(tmp_path / "g", {"a": 5, "b": 3, "c": 6}, seed=50))
    model = LoadedModel(tiny_net(), PREP, "tiny", fingerprint="tiny-0")
    opts = ExtractOptions(preprocessing=PREP, device="cpu", workers=0, batch_size=4)
    extracted = embed_images(model, query, opts).embeddings

    s = embeval.embed(model.module, DataLoader(Folder(query, PREP), batch_size=3), device="cpu")
    torch.testing.assert_close(s.rows(0, s.n), extracted, rtol=0, atol=1e-6)
    assert s.labels.tolist() == query.labels

    out = extract_to_files(model, [(query, tmp_path / "q.safetensors"),
                                   (gallery, tmp_path / "g.safetensors")], opts)
    from_files = embeval.evaluate(embeval.load(out[0][0]), embeval.load(out[1][0]),
                                  ks=(1, 2), device="cpu")
    in_process = embeval.evaluate_model(model.module, DataLoader(Folder(query, PREP), batch_size=5),
                                        DataLoader(Folder(gallery, PREP), batch_size=2),
                                        device="cpu", ks=(1, 2))
    assert in_process.metrics == pytest.approx(from_files.metrics, abs=1e-6)

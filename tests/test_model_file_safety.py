"""Loading a model file never crashes, hangs or allocates without bound; saves honour the umask."""

from __future__ import annotations

import os
import pickle
import stat
import threading
import zipfile

import numpy as np
import pytest
import torch

import scvi_rs
from scvi_rs.model.base._base_model import _validate_var_names
from scvi_rs.model.base._files import (
    safe_pickle_load,
    safe_torch_load,
    write_files_atomically,
)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    scvi_rs.settings.seed = 0
    adata = scvi_rs.data.synthetic_iid(batch_size=50, n_genes=30)
    scvi_rs.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = scvi_rs.model.SCVI(adata, n_latent=3)
    model.train(max_epochs=1)
    path = tmp_path_factory.mktemp("model")
    model.save(str(path), overwrite=True, save_anndata=True)
    return path, adata


def _file_with_attr(tmp_path, saved_model, extra):
    path, _ = saved_model
    content = safe_torch_load(os.path.join(path, "model.pt"))
    content["attr_dict"].update(extra)
    target = tmp_path / "evil"
    target.mkdir()
    torch.save(content, target / "model.pt")
    return target


def test_sparse_tensor_in_attr_dict_is_refused(tmp_path, saved_model):
    bad = torch.sparse_coo_tensor(torch.tensor([[0, 10**9]]), torch.tensor([1.0, 2.0]), (3,))
    target = _file_with_attr(tmp_path, saved_model, {"evil_": bad})
    with pytest.raises(ValueError, match="does not unpickle"):
        scvi_rs.model.SCVI.load(str(target), adata=saved_model[1].copy())


def test_bytearray_is_refused(tmp_path, saved_model):
    target = _file_with_attr(tmp_path, saved_model, {"evil_": bytearray(16)})
    with pytest.raises(ValueError, match="does not unpickle"):
        scvi_rs.model.SCVI.load(str(target), adata=saved_model[1].copy())


def test_compressed_record_is_refused(tmp_path, saved_model):
    path, adata = saved_model
    target = tmp_path / "deflated"
    target.mkdir()
    with (
        zipfile.ZipFile(os.path.join(path, "model.pt")) as src,
        zipfile.ZipFile(target / "model.pt", "w", compression=zipfile.ZIP_DEFLATED) as dst,
    ):
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(ValueError, match="compressed"):
        scvi_rs.model.SCVI.load(str(target), adata=adata.copy())


def test_fifo_model_file_is_refused_without_blocking(tmp_path, saved_model):
    target = tmp_path / "fifo"
    target.mkdir()
    os.mkfifo(target / "model.pt")
    outcome: list[BaseException | None] = []

    def load():
        try:
            scvi_rs.model.SCVI.load(str(target), adata=saved_model[1].copy())
            outcome.append(None)
        except BaseException as err:
            outcome.append(err)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "load() blocked on a FIFO"
    assert isinstance(outcome[0], ValueError)
    assert "not a regular file" in str(outcome[0])


def test_fifo_saved_anndata_is_refused(tmp_path, saved_model):
    path, _ = saved_model
    target = tmp_path / "fifo_adata"
    target.mkdir()
    (target / "model.pt").write_bytes((path / "model.pt").read_bytes())
    os.mkfifo(target / "adata.h5ad")
    with pytest.raises(ValueError, match="not a regular file"):
        scvi_rs.model.SCVI.load(str(target))


def test_pickle_payload_in_legacy_attr_file_does_not_run(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "attr.pkl"
    path.write_bytes(pickle.dumps({"x": Payload()}))
    with pytest.raises(ValueError, match="does not unpickle"):
        safe_pickle_load(path)
    assert not marker.exists()


def test_saved_files_get_the_umask_permissions(tmp_path, saved_model):
    old = os.umask(0o022)
    try:
        write_files_atomically({str(tmp_path / "a.bin"): lambda p: open(p, "wb").close()})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.bin").st_mode) == 0o644


def test_failed_save_leaves_no_temporary_file(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"old")

    def fail(path):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_files_atomically({str(tmp_path / "model.pt"): fail})
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]
    assert (tmp_path / "model.pt").read_bytes() == b"old"


def test_var_names_in_another_order_are_named_in_the_error():
    # 20,000 genes: the former check rebuilt a set per gene and took minutes here
    genes = np.array([f"gene{i}" for i in range(20_000)])
    adata = scvi_rs.data.synthetic_iid(batch_size=2, n_genes=20_000, n_batches=1)
    adata.var_names = np.concatenate([genes[1:], ["other"]])
    with pytest.raises(ValueError, match=r"not saved: \['other'\]; missing: \['gene0'\]"):
        _validate_var_names(adata, genes)


def test_legacy_non_zip_torch_format_is_refused(tmp_path, saved_model):
    target = tmp_path / "legacy_format"
    target.mkdir()
    torch.save({"a": torch.zeros(2)}, target / "model.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="not a zip-format torch file"):
        scvi_rs.model.SCVI.load(str(target), adata=saved_model[1].copy())


def test_storage_larger_than_its_record_is_refused_without_allocating(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(4)}, path)
    with zipfile.ZipFile(path) as src:
        records = {info.filename: src.read(info) for info in src.infolist()}
    name = next(n for n in records if n.endswith("data.pkl"))
    # the storage now claims 2**30 elements (4 GiB) while its record holds 16 bytes
    forged = records[name].replace(b"K\x04tq", b"J\x00\x00\x00\x40tq")
    assert forged != records[name]
    with zipfile.ZipFile(path, "w") as dst:
        for n, data in records.items():
            dst.writestr(n, forged if n == name else data)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        safe_torch_load(path)

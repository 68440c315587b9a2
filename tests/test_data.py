"""job.data: synthetic data, device tensors normalized like the seed, batches, and the verified CIFAR-10 cache."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms

import job.data
from job.data import Arrays, augment, batch_indices, load_arrays, synthetic_arrays, to_device
from job.spec import DataSpec, SpecError

MIRROR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-python.tar.gz"
needs_mirror = pytest.mark.skipif(not MIRROR.is_file(), reason=f"real CIFAR-10 mirror absent at {MIRROR}")
CPU = torch.device("cpu")


def mirror_spec(root: Path) -> DataSpec:
    digest = MIRROR.with_name(MIRROR.name + ".sha256").read_text().split()[0]
    return DataSpec(root=str(root), source=str(MIRROR), sha256=digest)


@pytest.fixture(scope="session")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataSpec, Arrays]:
    """The real archive, cached once per test session (test_train.py shares the same root)."""
    if not MIRROR.is_file():
        pytest.skip(f"real CIFAR-10 mirror absent at {MIRROR}")
    spec = mirror_spec(tmp_path_factory.getbasetemp() / "cifar10-root")
    return spec, load_arrays(spec, seed=0)


def leftovers(root: Path) -> list[str]:
    """Anything under data.root but the lock file: caches, partial folders, archives."""
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) if root.exists() else []


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- synthetic data ----


def test_synthetic_is_shaped_like_cifar() -> None:
    a = synthetic_arrays(300, 100, seed=0)
    assert (a.x_train.shape, a.x_test.shape) == ((300, 3, 32, 32), (100, 3, 32, 32))
    assert a.x_train.dtype == a.x_test.dtype == torch.uint8
    assert (a.y_train.shape, a.y_test.shape) == ((300,), (100,))
    assert a.y_train.dtype == torch.int64
    assert set(a.y_train.tolist()) == set(range(10))
    assert 0 <= int(a.y_test.min()) and int(a.y_test.max()) <= 9
    assert int(a.x_train.min()) < 64 and int(a.x_train.max()) > 192  # spans the pixel range


def test_device_data_is_kept_for_the_next_trial_one_entry_at_a_time() -> None:
    """A reused Tune worker skips the load and the copy for its next trial of the same data."""
    spec = DataSpec(dataset="synthetic", synthetic_train=200, synthetic_test=50)
    job.data.device_data.cache_clear()
    first = job.data.device_data(spec, 0, CPU)
    assert job.data.device_data(spec, 0, CPU) is first
    fresh = to_device(load_arrays(spec, seed=0), CPU)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(first, name), getattr(fresh, name)), name
    other = job.data.device_data(spec, 1, CPU)
    assert other is not first and not torch.equal(other.x_train, first.x_train)
    assert job.data.device_data(spec, 0, CPU) is not first  # one entry: seed 1's replaced it
    assert job.data.device_data.cache_info().currsize == 1


def test_importing_data_leaves_torchvision_unloaded() -> None:
    """torchvision pulls in torch._dynamo: seconds of every trial worker's start, needed only to build the CIFAR-10 cache."""
    code = "import sys, job.data; print('torchvision' in sys.modules, 'torch._dynamo' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "False"], done.stderr[-2000:]


def test_synthetic_is_deterministic_by_seed() -> None:
    a, b, c = synthetic_arrays(200, 50, seed=3), synthetic_arrays(200, 50, seed=3), synthetic_arrays(200, 50, seed=4)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.x_train, c.x_train)


def test_load_arrays_synthetic_uses_the_spec_sizes(tmp_path: Path) -> None:
    spec = DataSpec(dataset="synthetic", root=str(tmp_path / "root"), synthetic_train=120, synthetic_test=30)
    a = load_arrays(spec, seed=7)
    assert (len(a.y_train), len(a.y_test)) == (120, 30)
    assert torch.equal(a.x_train, synthetic_arrays(120, 30, seed=7).x_train)
    assert not (tmp_path / "root").exists()  # synthetic data never touches the cache


# ---- device tensors ----


def test_to_device_normalizes_like_the_seed() -> None:
    a = synthetic_arrays(20, 10, seed=0)
    a = Arrays(a.x_train, a.y_train, a.x_test, a.y_test)
    a.x_train[0].fill_(0)
    a.x_train[1].fill_(255)
    d = to_device(a, CPU)
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (10, 3, 32, 32)
    assert d.x_train.dtype == torch.float32
    assert float(d.x_train[0].min()) == -1.0 and float(d.x_train[1].max()) == 1.0
    assert float(d.x_train.min()) >= -1.0 and float(d.x_train.max()) <= 1.0
    seed_transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    for i in range(2, 6):
        pil = Image.fromarray(a.x_train[i].permute(1, 2, 0).numpy())  # HWC uint8, as torchvision's CIFAR10 yields
        torch.testing.assert_close(d.x_train[i], seed_transform(pil), rtol=0, atol=1e-6)
    assert torch.equal(d.y_train, a.y_train) and torch.equal(d.y_test, a.y_test)


def test_to_device_leaves_the_uint8_arrays_alone() -> None:
    a = synthetic_arrays(20, 10, seed=0)
    before = a.x_train.clone()
    to_device(a, CPU)
    assert torch.equal(a.x_train, before)


def crops_of(image: torch.Tensor, padding: int) -> list[tuple[int, int, bool, torch.Tensor]]:
    """Every crop augment may return for one image, with its row and column offsets and whether it is mirrored."""
    padded = torch.nn.functional.pad(image[None], (padding,) * 4, mode="reflect")[0] if padding else image
    crops = []
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy : dy + 32, dx : dx + 32]
            crops += [(dy, dx, False, crop), (dy, dx, True, crop.flip(2))]
    return crops


@pytest.mark.parametrize("padding", [0, 2, 4])
def test_augment_returns_random_crops_and_mirror_images(padding: int) -> None:
    x = to_device(synthetic_arrays(10, 64, seed=3), CPU).x_test
    torch.manual_seed(0)
    out = augment(x, padding)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.is_contiguous(memory_format=torch.channels_last)  # what CUDA convolutions want
    drawn = []
    for image, got in zip(x, out):
        matches = [(dy, dx, flip) for dy, dx, flip, crop in crops_of(image, padding) if torch.equal(crop, got)]
        assert matches, "not a crop of the padded image, nor its mirror image"
        drawn.append(matches[0])
    assert {flip for _, _, flip in drawn} == {False, True}  # 64 images: both sides come up
    if padding:
        assert len({(dy, dx) for dy, dx, _ in drawn}) > 10, drawn  # offsets vary from image to image
        rows = [dy for dy, _, _ in drawn]
        assert max(rows) - min(rows) >= padding  # and span the padding


def test_augment_draws_from_the_device_generator() -> None:
    x = to_device(synthetic_arrays(10, 32, seed=3), CPU).x_test
    torch.manual_seed(5)
    a = augment(x, 4)
    torch.manual_seed(5)
    b = augment(x, 4)
    c = augment(x, 4)
    assert torch.equal(a, b) and not torch.equal(b, c)  # seeded by the trial's seed, saved with its checkpoints


@pytest.mark.parametrize("n, batch, sizes", [(96, 32, [32, 32, 32]), (100, 32, [32, 32, 32, 4]), (65, 32, [32, 32])])
def test_batch_indices_cover_a_permutation(n: int, batch: int, sizes: list[int]) -> None:
    batches = list(batch_indices(n, batch, torch.Generator().manual_seed(0), CPU))
    assert [len(b) for b in batches] == sizes
    seen = torch.cat(batches)
    assert len(set(seen.tolist())) == len(seen)  # no duplicates
    assert set(seen.tolist()) <= set(range(n))
    if sum(sizes) == n:
        assert sorted(seen.tolist()) == list(range(n))
    assert seen.tolist() != list(range(len(seen)))  # shuffled


def test_batch_indices_follow_the_generator() -> None:
    first = torch.cat(list(batch_indices(50, 8, torch.Generator().manual_seed(5), CPU)))
    again = torch.cat(list(batch_indices(50, 8, torch.Generator().manual_seed(5), CPU)))
    other = torch.cat(list(batch_indices(50, 8, torch.Generator().manual_seed(6), CPU)))
    assert torch.equal(first, again) and not torch.equal(first, other)


# ---- the verified cache ----


def test_checksum_mismatch_leaves_nothing_behind(tmp_path: Path) -> None:
    mirror = tmp_path / "cifar-10-python.tar.gz"
    mirror.write_bytes(b"not the archive")
    actual, expected = sha256(mirror), "0" * 64
    root = tmp_path / "root"
    with pytest.raises(SpecError) as err:
        load_arrays(DataSpec(root=str(root), source=str(mirror), sha256=expected), seed=0)
    (line,) = err.value.problems
    assert line.startswith("data.sha256: ")
    assert f"got {actual}" in line and f"expected {expected}" in line and str(mirror) in line
    assert leftovers(root) == []


def test_corrupt_archive_with_matching_digest_leaves_nothing_behind(tmp_path: Path) -> None:
    mirror = tmp_path / "cifar-10-python.tar.gz"
    mirror.write_bytes(b"\x1f\x8b\x08\x00truncated gzip")
    root = tmp_path / "root"
    with pytest.raises(SpecError) as err:
        load_arrays(DataSpec(root=str(root), source=str(mirror), sha256=sha256(mirror)), seed=0)
    assert err.value.problems[0].startswith("data.source: the archive cannot be extracted")
    assert leftovers(root) == []


def wrong_archive(tmp_path: Path) -> Path:
    """A valid .tar.gz that is not CIFAR-10 (no cifar-10-batches-py inside)."""
    mirror = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(mirror, "w:gz") as tar:
        info = tarfile.TarInfo("README")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    return mirror


def test_archive_without_cifar_batches_leaves_nothing_behind(tmp_path: Path) -> None:
    mirror, root = wrong_archive(tmp_path), tmp_path / "root"
    with pytest.raises(SpecError):
        load_arrays(DataSpec(root=str(root), source=str(mirror), sha256=sha256(mirror)), seed=0)
    assert leftovers(root) == []


def test_archive_without_cifar_batches_is_a_spec_error(tmp_path: Path) -> None:
    mirror, root = wrong_archive(tmp_path), tmp_path / "root"
    with pytest.raises(SpecError) as err:
        load_arrays(DataSpec(root=str(root), source=str(mirror), sha256=sha256(mirror)), seed=0)
    assert err.value.problems[0].startswith("data.source:")
    assert leftovers(root) == []


def test_missing_source_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "cifar-10-python.tar.gz"
    root = tmp_path / "root"
    with pytest.raises(SpecError) as err:
        load_arrays(DataSpec(root=str(root), source=str(missing), sha256="0" * 64), seed=0)
    assert err.value.problems == [f"data.source: file not found (got {missing}). Point it at cifar-10-python.tar.gz"]
    assert leftovers(root) == []


def test_unreachable_https_source(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/cifar-10-python.tar.gz"  # the discard port: nothing listens, refused at once
    root = tmp_path / "root"
    with pytest.raises(SpecError) as err:
        load_arrays(DataSpec(root=str(root), source=url, sha256="0" * 64), seed=0)
    assert err.value.problems[0].startswith("data.source: download failed")
    assert f"(got {url})" in err.value.problems[0]
    assert leftovers(root) == []


@needs_mirror
def test_real_archive_counts(cifar: tuple[DataSpec, Arrays]) -> None:
    _, a = cifar
    assert a.x_train.shape == (50_000, 3, 32, 32) and a.x_test.shape == (10_000, 3, 32, 32)
    assert a.x_train.dtype == torch.uint8
    assert torch.bincount(a.y_train, minlength=10).tolist() == [5000] * 10
    assert torch.bincount(a.y_test, minlength=10).tolist() == [1000] * 10
    # the README's per-channel train means (JPEG-rebuilt pixels: 0.4913, 0.4821, 0.4465)
    means = a.x_train[:10_000].float().mean(dim=(0, 2, 3)) / 255
    torch.testing.assert_close(means, torch.tensor([0.4913, 0.4821, 0.4465]), rtol=0, atol=0.005)


@needs_mirror
def test_second_load_hits_the_cache(cifar: tuple[DataSpec, Arrays], monkeypatch: pytest.MonkeyPatch) -> None:
    spec, first = cifar
    root = Path(spec.root)
    caches = sorted(root.glob("cifar10-*.pt"))
    assert [c.name for c in caches] == [f"cifar10-{spec.sha256[:16]}.pt"]
    mtime = caches[0].stat().st_mtime_ns

    def no_rebuild(*args: object) -> None:
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(job.data, "_build_cache", no_rebuild)
    again = load_arrays(spec, seed=0)
    assert torch.equal(again.y_train, first.y_train) and torch.equal(again.x_test, first.x_test)
    assert caches[0].stat().st_mtime_ns == mtime
    assert leftovers(root) == [caches[0].name]  # no partial folders, no copy of the archive


@needs_mirror
@pytest.mark.parametrize("damage", [b"", b"garbage, not a torch file"])
def test_a_damaged_cache_is_rebuilt_with_one_line(
    cifar: tuple[DataSpec, Arrays], tmp_path: Path, damage: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, first = cifar
    root = tmp_path / "root"
    root.mkdir()
    cache = next(Path(spec.root).glob("cifar10-*.pt"))
    (root / cache.name).write_bytes(damage)  # as a disk-full write or a stray copy leaves it
    again = load_arrays(spec.model_copy(update={"root": str(root)}), seed=0)
    assert torch.equal(again.y_test, first.y_test) and torch.equal(again.x_train[:10], first.x_train[:10])
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("data: the cache ") and "rebuilding it" in line
    assert leftovers(root) == [cache.name]

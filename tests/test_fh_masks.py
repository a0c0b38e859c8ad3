"""FH masks as a derived TFDS dataset: exactness (local and Beam), dtypes, resume, sources."""

import json
import os
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
import pytest
import skimage.data
import tensorflow_datasets as tfds
from PIL import Image

from common.data import build_tools, fh_masks, segmentation
from common.data.folder_builders import FolderImages
from common.data.synthetic_scenes import SyntheticScenes, SyntheticScenesConfig
from tests.helpers import FH_SETTINGS as SETTINGS
from tests.helpers import check_fh_exact as _check_exact
from tests.helpers import fh_reference as _reference
from tests.helpers import photo_folder as _photo_folder
from tests.helpers import prepare_photo_folder as _prepare_folder
from tests.helpers import records_by_name as _records
from tests.helpers import skimage_photos as _photos

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DERIVED = "folder_images_fh/photos-fh100-50_1000-1000"
VERSION = str(FolderImages.VERSION)  # a derived dataset takes its source's version
_REAL_FELZENSZWALB_IDS = segmentation.felzenszwalb_ids


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A prepared `folder_images/photos` dataset of the three photographs."""
    root = tmp_path_factory.mktemp("photos")
    originals = _photo_folder(str(root))
    return str(root), originals


@pytest.fixture
def photo_data_dir(photos, tmp_path):
    root, _ = photos
    _prepare_folder(tmp_path, root)
    return str(tmp_path)


@pytest.mark.parametrize("use_beam", [False, True], ids=["local", "beam_in_memory"])
def test_fh_exact_on_photographs(photos, photo_data_dir, use_beam):
    _, originals = photos
    derived = fh_masks.build_fh_dataset(
        "folder_images/photos",
        photo_data_dir,
        fh_settings=SETTINGS,
        use_beam=use_beam,
        beam_pipeline_options="direct_running_mode=in_memory",
        records_per_shard=2,
    )
    assert derived.info.full_name == f"{DERIVED}/{VERSION}"
    assert derived.info.features["fh_masks"].np_dtype == np.uint8
    source = tfds.builder("folder_images/photos", data_dir=photo_data_dir)
    _check_exact(derived, source, originals)
    # Readable by name from the files alone, like any prepared TFDS dataset.
    again = tfds.builder(DERIVED, data_dir=photo_data_dir)
    assert again.info.metadata["fh_settings"] == [list(s) for s in SETTINGS]
    work = os.path.join(photo_data_dir, "downloads/fh_work", *DERIVED.split("/"), VERSION)
    assert not os.path.exists(work)  # FH files are deleted once the dataset is written


@pytest.mark.slow
def test_fh_exact_beam_direct_runner_multiprocessing(photos, photo_data_dir):
    # The default local Beam options: DirectRunner, all cores, worker processes. An explicit
    # dtype skips the first pass, so FH runs inside TFDS's Beam pipeline on the workers.
    _, originals = photos
    derived = fh_masks.build_fh_dataset(
        "folder_images/photos",
        photo_data_dir,
        fh_settings=SETTINGS,
        fh_dtype="uint8",
        records_per_shard=1,
    )
    source = tfds.builder("folder_images/photos", data_dir=photo_data_dir)
    _check_exact(derived, source, originals)


def test_fh_dtype_auto_uint16_and_forced_uint8_overflow(photo_data_dir):
    fine = ((1.0, 2),)  # hundreds of segments on a photograph
    with pytest.raises(segmentation.FhOverflowError, match=r"photos.*train\[\d\] \(\w+\.\w+\)"):
        fh_masks.build_fh_dataset(
            "folder_images/photos",
            photo_data_dir,
            fh_settings=fine,
            fh_dtype="uint8",
            use_beam=False,
        )
    derived = fh_masks.build_fh_dataset(
        "folder_images/photos", photo_data_dir, fh_settings=fine, use_beam=False
    )
    assert derived.info.features["fh_masks"].np_dtype == np.uint16
    for ex in _records(derived).values():
        reference = _reference(ex["image"], fine)
        assert reference.max() > 255
        np.testing.assert_array_equal(ex["fh_masks"], reference)


def _counting_fh(monkeypatch, fail_at=None):
    calls = []
    real = _REAL_FELZENSZWALB_IDS

    def counted(image, settings):
        if fail_at is not None and len(calls) == fail_at:
            raise RuntimeError("simulated crash")
        calls.append(image.shape)
        return real(image, settings)

    monkeypatch.setattr(segmentation, "felzenszwalb_ids", counted)
    return calls


def _many_photos_folder(root, count=6):
    os.makedirs(root, exist_ok=True)
    astronaut = skimage.data.astronaut()
    for i in range(count):
        crop = astronaut[40 * i : 40 * i + 96, 30 * i : 30 * i + 96]
        Image.fromarray(crop).save(os.path.join(root, f"crop{i}.png"))


def test_resume_after_failure_skips_finished_shards(tmp_path, monkeypatch):
    _many_photos_folder(tmp_path / "crops")
    data_dir = str(tmp_path / "tfds")
    _prepare_folder(data_dir, tmp_path / "crops", name="crops")
    kwargs = dict(fh_settings=((50.0, 20),), use_beam=False, records_per_shard=2)
    calls = _counting_fh(monkeypatch, fail_at=3)  # dies inside the second of three shards
    with pytest.raises(RuntimeError, match="simulated crash"):
        fh_masks.build_fh_dataset("folder_images/crops", data_dir, **kwargs)
    assert len(calls) == 3
    work = tmp_path / "tfds/downloads/fh_work/folder_images_fh/crops-fh50-20" / VERSION
    assert sorted(os.listdir(work)) == ["train-0000000000-0000000002.npz"]  # no partial file
    derived_name = "folder_images_fh/crops-fh50-20"
    with pytest.raises(tfds.core.registered.DatasetNotFoundError):
        tfds.builder(derived_name, data_dir=data_dir)

    calls = _counting_fh(monkeypatch)
    derived = fh_masks.build_fh_dataset("folder_images/crops", data_dir, **kwargs)
    assert len(calls) == 4  # only the records of the two unfinished shards
    assert derived.info.splits["train"].num_examples == 6
    for ex in _records(derived).values():
        np.testing.assert_array_equal(ex["fh_masks"], _reference(ex["image"], ((50.0, 20),)))


def test_killed_run_leaves_no_prepared_dataset_and_resumes(photos, photo_data_dir, monkeypatch):
    # A real SIGKILL while TFDS writes the derived dataset (after every shard's FH is done).
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {REPO!r})
        from common.data import fh_masks
        real = fh_masks.shard_examples
        def dying(job, shard, dtype):
            for item in real(job, shard, dtype):
                if shard.start >= 2:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield item
        fh_masks.shard_examples = dying
        fh_masks.main(["--dataset", "folder_images/photos", "--data_dir", {photo_data_dir!r},
                       "--fh", "100:50,1000:1000", "--local", "--records_per_shard", "1"])
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert result.returncode == -9, result.stderr.decode()[-2000:]
    config_dir = os.path.join(photo_data_dir, *DERIVED.split("/"))
    leftovers = os.listdir(config_dir)
    assert VERSION not in leftovers  # never renamed into place ...
    assert any(name.startswith("incomplete") for name in leftovers)  # ... only TFDS's tmp dir
    with pytest.raises(tfds.core.registered.DatasetNotFoundError):
        tfds.load(DERIVED, data_dir=photo_data_dir)
    source = tfds.builder("folder_images/photos", data_dir=photo_data_dir)

    calls = _counting_fh(monkeypatch)
    derived = fh_masks.build_fh_dataset(
        "folder_images/photos",
        photo_data_dir,
        fh_settings=SETTINGS,
        use_beam=False,
        records_per_shard=1,
    )
    assert calls == []  # every shard's FH was finished by the killed run
    _check_exact(derived, source, photos[1])
    # A finished dataset is reused as it is.
    again = fh_masks.build_fh_dataset("folder_images/photos", photo_data_dir, fh_settings=SETTINGS)
    assert calls == [] and again.data_dir == derived.data_dir


def test_embedded_dataset_source(tmp_path):
    config = SyntheticScenesConfig(name="fhsrc", num_train=6, num_validation=2, num_test=2)
    source = SyntheticScenes(config=config, data_dir=str(tmp_path), num_workers=1)
    source.download_and_prepare()
    derived = fh_masks.build_fh_dataset(
        "synthetic_scenes/fhsrc",
        str(tmp_path),
        splits=["validation"],
        fh_settings=((10.0, 5), (29.0, 29)),
        use_beam=False,
    )
    # The derived dataset carries its source's version, whatever that is.
    assert str(source.info.version) == str(SyntheticScenes.VERSION)
    assert derived.info.full_name == f"synthetic_scenes_fh/fhsrc-fh10-5_29-29/{source.info.version}"
    assert list(derived.info.splits) == ["validation"]
    assert derived.info.features["fh_masks"].shape == (2, 64, 64)
    src = list(tfds.as_numpy(source.as_dataset(split="validation")))
    out = list(tfds.as_numpy(derived.as_dataset(split="validation")))
    assert len(out) == 2
    for ex in out:
        (match,) = [s for s in src if np.array_equal(s["image"], ex["image"])]
        for key in ("instance_mask", "class_mask", "labels", "label"):
            np.testing.assert_array_equal(ex[key], match[key])
        # The source's own fh_masks are replaced by the requested settings.
        np.testing.assert_array_equal(ex["fh_masks"], _reference(ex["image"], ((10, 5), (29, 29))))


def _jpeg(array):
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _add_bytes(tar, name, data):
    import io

    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_imagenet2012_missing_manual_dir_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "downloads" / "manual")):
        fh_masks.build_fh_dataset("imagenet2012", str(tmp_path), use_beam=False)
    elsewhere = tmp_path / "elsewhere"
    with pytest.raises(FileNotFoundError, match=str(elsewhere)):
        fh_masks.build_fh_dataset(
            "imagenet2012", str(tmp_path), manual_dir=str(elsewhere), use_beam=False
        )


def test_imagenet2012_from_manual_dir(tmp_path):
    # ImageNet's real archive layout, with three small photographs.
    manual = tmp_path / "manual"
    manual.mkdir()
    photos = [np.asarray(p) for p in _photos(scale=6).values()]
    import io

    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w") as tar:
        _add_bytes(tar, "n01440764_1.JPEG", _jpeg(photos[0]))
        _add_bytes(tar, "n01440764_2.JPEG", _jpeg(photos[1]))
    with tarfile.open(manual / "ILSVRC2012_img_train.tar", "w") as tar:
        _add_bytes(tar, "n01440764.tar", inner.getvalue())
    with tarfile.open(manual / "ILSVRC2012_img_val.tar", "w") as tar:
        _add_bytes(tar, "ILSVRC2012_val_00000001.JPEG", _jpeg(photos[2]))
    derived = fh_masks.build_fh_dataset(
        "imagenet2012", str(tmp_path), manual_dir=str(manual), use_beam=False
    )
    assert derived.info.full_name.startswith("imagenet2012_fh/fh1000-1000/")
    assert derived.info.splits["train"].num_examples == 2
    source = tfds.builder("imagenet2012", data_dir=str(tmp_path))
    src = _records(source, "validation", key="file_name")
    for name, ex in _records(derived, "validation", key="file_name").items():
        assert ex["label"] == src[name]["label"] == 65  # n01751748, the first validation label
        np.testing.assert_array_equal(ex["image"], src[name]["image"])
        np.testing.assert_array_equal(ex["fh_masks"], _reference(ex["image"], ((1000, 1000),)))


def _fake_coco(root):
    """COCO 2017's extracted-download layout with four small images and a few boxes."""
    photos = list(_photos(scale=8).values())
    categories = [{"id": i + 1, "name": f"category{i}", "supercategory": "x"} for i in range(80)]
    paths = {}
    splits = {"train": ("train2017", 2), "validation": ("val2017", 1), "test": ("test2017", 1)}
    next_image = 0
    for split, (folder, count) in splits.items():
        images_dir, annotations_dir = root / f"{split}_images", root / f"{split}_annotations"
        (images_dir / folder).mkdir(parents=True)
        (annotations_dir / "annotations").mkdir(parents=True)
        images, annotations = [], []
        for _ in range(count):
            photo = np.asarray(photos[next_image % len(photos)])
            image_id = 100 + next_image
            file_name = f"{image_id:012d}.jpg"
            Image.fromarray(photo).save(images_dir / folder / file_name, quality=90)
            h, w = photo.shape[:2]
            images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
            for k in range(2):
                annotations.append(
                    {
                        "id": 1000 + 10 * next_image + k,
                        "image_id": image_id,
                        "category_id": 3 + k,
                        "bbox": [2.0 + k, 3.0, w / 2, h / 3],
                        "area": 50 + k,
                        "iscrowd": k,
                        "segmentation": [],
                    }
                )
            next_image += 1
        if split == "test":
            name = "image_info_test2017.json"
            content = {"images": images, "categories": categories}
        else:
            name = f"instances_{folder}.json"
            content = {"images": images, "annotations": annotations, "categories": categories}
        (annotations_dir / "annotations" / name).write_text(json.dumps(content))
        paths[f"{split}_images"] = str(images_dir)
        paths[f"{split}_annotations"] = str(annotations_dir)
    return paths


def test_coco_2017_prepared_source(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"coco/2017.*not prepared.*tfds build coco/2017"):
        fh_masks.build_fh_dataset("coco/2017", str(tmp_path), use_beam=False)
    # Prepare coco/2017 from a fake download (TFDS's own builder reads it), then derive.
    paths = _fake_coco(tmp_path / "extracted")
    monkeypatch.setattr(
        tfds.download.DownloadManager, "download_and_extract", lambda self, urls: paths
    )
    tfds.builder("coco/2017", data_dir=str(tmp_path)).download_and_prepare()
    derived = fh_masks.build_fh_dataset(
        "coco/2017", str(tmp_path), fh_settings=((100.0, 50),), use_beam=False
    )
    source = tfds.builder("coco/2017", data_dir=str(tmp_path))
    for split in ("train", "validation", "test"):
        src = _records(source, split, key="image/id")
        out = _records(derived, split, key="image/id")
        assert sorted(src) == sorted(out)
        for image_id, ex in out.items():
            for key in ("image", "image/filename"):
                np.testing.assert_array_equal(ex[key], src[image_id][key])
            for key, value in ex["objects"].items():
                np.testing.assert_array_equal(value, src[image_id]["objects"][key])
            np.testing.assert_array_equal(ex["fh_masks"], _reference(ex["image"], ((100, 50),)))
    assert len(_records(derived, "train", key="image/id")[100]["objects"]["bbox"]) == 2


def test_command_line_and_parsing(photo_data_dir, capsys):
    fh_masks.main(
        ["--dataset", "folder_images/photos", "--data_dir", photo_data_dir, "--fh", "500:300"]
        + ["--local", "--split", "train", "--keep_work_dir"]
    )
    assert f"folder_images_fh/photos-fh500-300/{VERSION} ready" in capsys.readouterr().out
    work = os.path.join(photo_data_dir, "downloads/fh_work/folder_images_fh/photos-fh500-300")
    assert os.listdir(os.path.join(work, VERSION))  # kept on request
    assert segmentation.parse_fh_settings("1000:1000, 500:500") == ((1000.0, 1000), (500.0, 500))
    with pytest.raises(ValueError, match="SCALE:MIN_SIZE"):
        segmentation.parse_fh_settings("1000")
    options = build_tools.beam_options("runner=DataflowRunner,project=p,direct_num_workers=0")
    assert options.get_all_options()["runner"] == "DataflowRunner"
    assert options.get_all_options()["project"] == "p"
    with pytest.raises(ValueError, match="no split"):
        fh_masks.build_fh_dataset(
            "folder_images/photos", photo_data_dir, splits=["nope"], use_beam=False
        )
    with pytest.raises(FileNotFoundError, match="folder_images/never_built.*folder_builders"):
        fh_masks.build_fh_dataset("folder_images/never_built", photo_data_dir, use_beam=False)
    with pytest.raises(ValueError, match="no Image feature 'img'"):
        fh_masks.build_fh_dataset(
            "folder_images/photos", photo_data_dir, image_key="img", use_beam=False
        )
